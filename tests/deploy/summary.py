"""Terminal-summary hook: says loudly when the deployment test (network namespaces) did not run.

Registered from tests/conftest.py (`pytest_plugins`) so the xdist controller prints it too.
"""

from __future__ import annotations

from typing import Any

import pytest

BANNER = "DEPLOYMENT TEST ACROSS HOSTS DID NOT RUN"
_DONE = pytest.StashKey[bool]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if config.stash.get(_DONE, False):
        return
    reasons = sorted({str(r.longrepr[-1]) for r in terminalreporter.stats.get("skipped", [])
                      if isinstance(r.longrepr, tuple) and BANNER in str(r.longrepr[-1])})  # fmt: skip
    if not reasons:
        return
    config.stash[_DONE] = True
    terminalreporter.write_sep("!", BANNER, red=True, bold=True)
    for reason in reasons:
        terminalreporter.write_line(reason.removeprefix("Skipped: "), red=True, bold=True)
    terminalreporter.write_sep("!", "README's deployment steps were not run across hosts", red=True, bold=True)
