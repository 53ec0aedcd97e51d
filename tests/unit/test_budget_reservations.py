"""Probing budgets and consent uses charged only for answers: reserve, commit, release.

A reservation counts against the cap at once (so concurrent callers never exceed it); commit
makes it final; release gives it back. Property test: threads racing reserve / commit / release
on a few subjects never see more than the cap held, and in the end exactly the committed
reservations are counted.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.budgets import ProbeBudget, release_windows
from policies.consent import ConsentRegistry
from policies.types import BudgetRule
from tests.unit.test_budgets import pseudo
from xgate.errors import BudgetExhausted, PolicyDenied

RULE = BudgetRule(max_checks=3, window_days=30, policy_id="dibao-tax-monthly-income")
T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def _used(budget: ProbeBudget, subject: str, at: datetime = T0 + timedelta(days=1)) -> int:
    return budget.used(subject, "dibao", "civil_affairs", RULE, at)


def test_reserve_counts_release_gives_back_commit_keeps(tmp_path: Path) -> None:
    budget = ProbeBudget(tmp_path / "b.db")
    a, b = pseudo(1), pseudo(2)
    held = budget.reserve([a, b], "dibao", "civil_affairs", RULE, T0)
    assert held.reservation.startswith("rsv_") and budget.pending() == 1
    assert _used(budget, a) == 1 and _used(budget, b) == 1
    assert budget.release(held.reservation) is True
    assert _used(budget, a) == 0 and _used(budget, b) == 0 and budget.pending() == 0
    assert budget.release(held.reservation) is False  # idempotent
    kept = budget.reserve([a], "dibao", "civil_affairs", RULE, T0 + timedelta(hours=1))
    assert budget.commit(kept.reservation) is True
    assert budget.release(kept.reservation) is False  # a committed charge cannot be given back
    assert _used(budget, a) == 1 and budget.pending() == 0


def test_a_pending_reservation_holds_the_cap(tmp_path: Path) -> None:
    budget = ProbeBudget(tmp_path / "b.db")
    s = pseudo(3)
    held = [budget.reserve([s], "dibao", "civil_affairs", RULE, T0 + timedelta(minutes=i)) for i in range(3)]
    with pytest.raises(BudgetExhausted):
        budget.reserve([s], "dibao", "civil_affairs", RULE, T0 + timedelta(minutes=5))
    budget.release(held[1].reservation)
    budget.reserve([s], "dibao", "civil_affairs", RULE, T0 + timedelta(minutes=6))
    assert _used(budget, s) == 3


def test_release_windows_removes_one_entry_at_that_instant() -> None:
    history = {"a": [5.0, 5.0, 3.0], "b": [4.0]}
    assert release_windows(history, ["a", "b", "c"], 5.0) == {"a": [5.0, 3.0], "b": [4.0], "c": []}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plans=st.lists(
        st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["commit", "release"])), min_size=1, max_size=5),
        min_size=2,
        max_size=4,
    )
)
def test_concurrent_reserve_commit_release_never_exceed_the_cap(tmp_path_factory, plans) -> None:
    budget = ProbeBudget(tmp_path_factory.mktemp("race") / "b.db")
    subjects = [pseudo(100 + i) for i in range(3)]
    committed = [0, 0, 0]
    held_now = [0, 0, 0]
    peak = [0, 0, 0]
    lock = threading.Lock()
    start = threading.Barrier(len(plans))

    def worker(plan: list[tuple[int, str]], n: int) -> None:
        start.wait()
        for k, (i, action) in enumerate(plan):
            try:
                receipt = budget.reserve(
                    [subjects[i]], "dibao", "civil_affairs", RULE, T0 + timedelta(seconds=n * 10 + k)
                )
            except BudgetExhausted:
                continue
            with lock:
                held_now[i] += 1
                peak[i] = max(peak[i], held_now[i])
            if action == "commit":
                budget.commit(receipt.reservation)
                with lock:
                    committed[i] += 1
            else:
                with lock:
                    held_now[i] -= 1
                budget.release(receipt.reservation)

    threads = [threading.Thread(target=worker, args=(plan, n)) for n, plan in enumerate(plans)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, s in enumerate(subjects):
        assert peak[i] <= RULE.max_checks
        assert _used(budget, s) == committed[i]
    assert budget.pending() == 0


def _consents(tmp_path: Path) -> tuple[ConsentRegistry, str]:
    registry = ConsentRegistry(tmp_path / "c.db", purposes={"income_certificate"})
    ref = registry.register(pseudo(9), "civil_affairs", "income_certificate", T0, T0 + timedelta(days=30), max_uses=1)
    return registry, ref


def test_one_time_consent_is_used_only_by_an_answer(tmp_path: Path) -> None:
    registry, ref = _consents(tmp_path)
    args = (ref, pseudo(9), "civil_affairs", "income_certificate")
    held = registry.reserve(*args, T0 + timedelta(hours=1))
    with pytest.raises(PolicyDenied, match="one-time consent already used"):  # held by the pending check
        registry.reserve(*args, T0 + timedelta(hours=1))
    assert registry.release(held) is True and registry.lookup(ref).uses == 0
    assert registry.release(held) is False
    again = registry.reserve(*args, T0 + timedelta(hours=2))
    assert registry.commit(again) is True and registry.release(again) is False
    assert registry.lookup(ref).uses == 1
    with pytest.raises(PolicyDenied, match="one-time consent already used"):
        registry.reserve(*args, T0 + timedelta(hours=3))


def test_concurrent_reservations_of_a_one_time_consent_admit_one(tmp_path: Path) -> None:
    registry, ref = _consents(tmp_path)
    won: list[str] = []
    refused: list[str] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        try:
            won.append(registry.reserve(ref, pseudo(9), "civil_affairs", "income_certificate", T0 + timedelta(hours=1)))
        except PolicyDenied:
            refused.append("x")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
