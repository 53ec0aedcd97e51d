"""Terminal-summary hook that says loudly when the browser tests did not run.

tests/browser/conftest.py registers it; under `make test` (xdist, no path arguments) the
controller does not load that conftest, so tests/conftest.py should also list this module in
`pytest_plugins`. The banner is written once either way.
"""

from __future__ import annotations

from typing import Any

import pytest

BANNER = "BROWSER TESTS DID NOT RUN"
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
    terminalreporter.write_sep("!", "the console was not tested in a browser", red=True, bold=True)
