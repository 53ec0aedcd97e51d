"""The per-subject sliding window behind probing budgets: pure decision, expiry, migration."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from policies.budgets import ProbeBudget, charge_windows
from policies.types import BudgetRule
from tests.unit.test_budgets import RULE, T0, pseudo

DAY = 86_400.0


@given(
    history=st.lists(st.floats(min_value=0, max_value=90 * DAY, allow_nan=False), max_size=8),
    now_day=st.integers(min_value=0, max_value=120),
    cap=st.integers(min_value=1, max_value=5),
)
def test_window_decision_matches_counting_every_evaluation(history: list[float], now_day: int, cap: int) -> None:
    rule = BudgetRule(max_checks=cap, window_days=30, policy_id="p")
    now = now_day * DAY
    inside = sorted((t for t in history if t > now - rule.window_seconds), reverse=True)
    windows, over = charge_windows({"s": history}, ["s"], rule, now)
    if len(inside) >= cap:
        assert windows == {}
        assert over == [("s", inside[cap - 1] + rule.window_seconds)]
    else:
        assert over == []
        assert windows == {"s": [now, *inside]}
        assert len(windows["s"]) <= cap  # a stored window never grows past the cap


def test_window_boundary_is_exclusive() -> None:
    rule = BudgetRule(max_checks=1, window_days=30, policy_id="p")
    now = 100 * DAY
    # An evaluation exactly one window ago no longer counts; one a second later still does.
    assert charge_windows({"s": [now - rule.window_seconds]}, ["s"], rule, now)[1] == []
    assert charge_windows({"s": [now - rule.window_seconds + 1]}, ["s"], rule, now)[1] != []


def test_slot_frees_when_the_oldest_counted_evaluation_expires(tmp_path: Path) -> None:
    budget = ProbeBudget(tmp_path / "b.db")
    s = pseudo(7)
    for day in range(3):
        budget.consume([s], "dibao", "civil_affairs", RULE, T0 + timedelta(days=day))
    assert budget.used(s, "dibao", "civil_affairs", RULE, T0 + timedelta(days=2)) == 3
    # Day 30 (exclusive window): the day-0 evaluation has expired, so exactly one slot is free.
    budget.consume([s], "dibao", "civil_affairs", RULE, T0 + timedelta(days=30))
    assert budget.used(s, "dibao", "civil_affairs", RULE, T0 + timedelta(days=30)) == 3


def test_rows_of_a_previous_version_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE probes (program TEXT, agency TEXT, subject TEXT, at REAL)")
    at = [(T0 + timedelta(days=d)).timestamp() for d in range(3)]
    conn.executemany("INSERT INTO probes VALUES ('dibao', 'civil_affairs', ?, ?)", [(pseudo(1), t) for t in at])
    conn.commit()
    conn.close()
    budget = ProbeBudget(path)
    assert budget.used(pseudo(1), "dibao", "civil_affairs", RULE, T0 + timedelta(days=3)) == 3
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "probes" not in tables


def test_expired_windows_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    budget = ProbeBudget(path)
    budget.consume([pseudo(1), pseudo(2)], "dibao", "civil_affairs", RULE, T0)
    budget.consume([pseudo(3)], "dibao", "civil_affairs", RULE, T0 + timedelta(days=31, hours=2))
    rows = sqlite3.connect(path).execute("SELECT subject FROM probe_windows").fetchall()
    assert rows == [(pseudo(3),)]
