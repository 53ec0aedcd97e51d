"""Terminal-summary hook that says loudly when the replicated (PostgreSQL) tests did not run."""

from __future__ import annotations

from typing import Any

import pytest

from tests.postgres import PG_BANNER

_DONE = pytest.StashKey[bool]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if config.stash.get(_DONE, False):
        return
    reasons = sorted({str(r.longrepr[-1]) for r in terminalreporter.stats.get("skipped", [])
                      if isinstance(r.longrepr, tuple) and PG_BANNER in str(r.longrepr[-1])})  # fmt: skip
    if not reasons:
        return
    config.stash[_DONE] = True
    terminalreporter.write_sep("!", PG_BANNER, red=True, bold=True)
    for reason in reasons:
        terminalreporter.write_line(reason.removeprefix("Skipped: "), red=True, bold=True)
    terminalreporter.write_sep("!", "budgets, consents and the audit log were not tested across replicas", red=True)
