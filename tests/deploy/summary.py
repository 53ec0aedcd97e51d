"""Terminal-summary hook: says loudly when the deployment test (network namespaces), the systemd unit
verification or the container build did not run.

Registered from tests/conftest.py (`pytest_plugins`) so the xdist controller prints it too.
"""

from __future__ import annotations

from typing import Any

import pytest

BANNER = "DEPLOYMENT TEST ACROSS HOSTS DID NOT RUN"
SYSTEMD_BANNER = "SYSTEMD UNIT FILES WERE NOT VERIFIED"
CONTAINER_BANNER = "CONTAINER IMAGE WAS NOT BUILT OR STARTED"
BANNERS = (BANNER, SYSTEMD_BANNER, CONTAINER_BANNER)
_DONE = pytest.StashKey[bool]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if config.stash.get(_DONE, False):
        return
    skipped = [str(r.longrepr[-1]) for r in terminalreporter.stats.get("skipped", []) if isinstance(r.longrepr, tuple)]
    for banner in BANNERS:
        reasons = sorted({reason for reason in skipped if banner in reason})
        if not reasons:
            continue
        config.stash[_DONE] = True
        terminalreporter.write_sep("!", banner, red=True, bold=True)
        for reason in reasons:
            terminalreporter.write_line(reason.removeprefix("Skipped: "), red=True, bold=True)
