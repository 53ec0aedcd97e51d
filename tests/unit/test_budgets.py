"""Probing budgets (atomic, all-or-nothing, sliding window) and the privacy ε ledger."""

from __future__ import annotations

import base64
import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.budgets import PrivacyLedger, ProbeBudget
from policies.types import BudgetRule
from xgate.errors import BudgetExhausted, InvalidInput

RULE = BudgetRule(max_checks=3, window_days=30, policy_id="dibao-tax-monthly-income")
T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def pseudo(i: int) -> str:
    return base64.b32encode(hashlib.sha256(str(i).encode()).digest()).decode().lower()[:26]


def test_cap_then_refusal_with_reset_time(tmp_path: Path) -> None:
    budget = ProbeBudget(tmp_path / "b.db")
    subject = pseudo(1)
    for day in range(3):
        budget.consume([subject], "dibao", "civil_affairs", RULE, T0 + timedelta(days=day))
    with pytest.raises(BudgetExhausted) as err:
        budget.consume([subject], "dibao", "civil_affairs", RULE, T0 + timedelta(days=5))
    details = err.value.details
    assert details["over_subjects"] == 1
    # The oldest of the three in-window evaluations (day 0) expires after 30 days.
    assert details["resets_at"] == (T0 + timedelta(days=30)).isoformat(timespec="seconds")
    assert details["retry_after_s"] == 25 * 86400
    assert subject not in err.value.message  # counts in the message; pseudonyms only in details
    assert details["sample_pseudonyms"] == [subject]
    # Exactly at the reset time the window has slid past day 0.
    budget.consume([subject], "dibao", "civil_affairs", RULE, T0 + timedelta(days=30))
    assert budget.used(subject, "dibao", "civil_affairs", RULE, T0 + timedelta(days=30)) == 3


def test_budget_is_per_program_and_agency(tmp_path: Path) -> None:
    budget = ProbeBudget(tmp_path / "b.db")
    subject = pseudo(2)
    for _ in range(3):
        budget.consume([subject], "dibao", "civil_affairs", RULE, T0)
    budget.consume([subject], "unemployment_subsidy", "hrss", RULE, T0)  # other key: fine
    budget.consume([subject], "dibao", "tax", RULE, T0)
    with pytest.raises(BudgetExhausted):
        budget.consume([subject], "dibao", "civil_affairs", RULE, T0)


def test_batch_is_all_or_nothing(tmp_path: Path) -> None:
    budget = ProbeBudget(tmp_path / "b.db")
    full, fresh = pseudo(3), [pseudo(i) for i in range(10, 20)]
    for _ in range(3):
        budget.consume([full], "dibao", "civil_affairs", RULE, T0)
    with pytest.raises(BudgetExhausted) as err:
        budget.consume([*fresh, full], "dibao", "civil_affairs", RULE, T0)
    assert err.value.details["over_subjects"] == 1
    assert err.value.details["batch_subjects"] == 11
    for s in fresh:  # nothing of the refused batch was recorded
        assert budget.used(s, "dibao", "civil_affairs", RULE, T0) == 0
    receipt = budget.consume(fresh + fresh[:2], "dibao", "civil_affairs", RULE, T0)
    assert receipt.subjects == 10  # duplicates are charged once


def test_empty_batch_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        ProbeBudget(tmp_path / "b.db").consume([], "dibao", "civil_affairs", RULE, T0)


def test_concurrent_callers_never_exceed_the_cap(tmp_path: Path) -> None:
    budget = ProbeBudget(tmp_path / "b.db")
    shared = [pseudo(i) for i in range(5)]
    ok: list[int] = []
    refused: list[int] = []
    barrier = threading.Barrier(12)

    def worker(n: int) -> None:
        barrier.wait()
        try:
            budget.consume(shared, "dibao", "civil_affairs", RULE, T0)
            ok.append(n)
        except BudgetExhausted:
            refused.append(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == RULE.max_checks
    assert len(refused) == 12 - RULE.max_checks
    for s in shared:
        assert budget.used(s, "dibao", "civil_affairs", RULE, T0) == RULE.max_checks


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=4), min_size=1, max_size=12))
def test_no_subject_ever_exceeds_the_cap(tmp_path_factory: pytest.TempPathFactory, batches: list[list[int]]) -> None:
    budget = ProbeBudget(tmp_path_factory.mktemp("hyp") / "b.db")
    model: dict[str, int] = {}
    for batch in batches:
        subjects = [pseudo(i) for i in batch]
        unique = set(subjects)
        expect_ok = all(model.get(s, 0) < RULE.max_checks for s in unique)
        try:
            budget.consume(subjects, "dibao", "civil_affairs", RULE, T0)
            assert expect_ok
            for s in unique:
                model[s] = model.get(s, 0) + 1
        except BudgetExhausted:
            assert not expect_ok
    for s, count in model.items():
        assert budget.used(s, "dibao", "civil_affairs", RULE, T0) == count <= RULE.max_checks


# -- privacy ledger -------------------------------------------------------------------------------


def test_ledger_caps_and_is_idempotent(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.db")
    first = ledger.spend("medical.claims_2025", "job-1", 3.0, cap=8.0)
    assert (first.spent, first.remaining, first.replayed) == (3.0, 5.0, False)
    again = ledger.spend("medical.claims_2025", "job-1", 3.0, cap=8.0)
    assert again.replayed and again.spent == 3.0  # not charged twice
    ledger.spend("medical.claims_2025", "job-2", 5.0, cap=8.0)  # exactly the cap
    with pytest.raises(BudgetExhausted) as err:
        ledger.spend("medical.claims_2025", "job-3", 0.1, cap=8.0)
    assert err.value.details["spent"] == 8.0 and err.value.details["resets_at"] is None
    ledger.spend("hrss.contributions_2025", "job-3", 0.1, cap=8.0)  # other dataset, own budget
    with pytest.raises(InvalidInput):
        ledger.spend("medical.claims_2025", "job-1", 2.0, cap=8.0)  # same job, different ε
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidInput):
            ledger.spend("medical.claims_2025", "job-x", bad, cap=8.0)


def test_ledger_survives_restart(tmp_path: Path) -> None:
    PrivacyLedger(tmp_path / "l.db").spend("d.s", "job-1", 6.0, cap=8.0)
    reopened = PrivacyLedger(tmp_path / "l.db")
    assert reopened.spent("d.s") == 6.0
    with pytest.raises(BudgetExhausted):
        reopened.spend("d.s", "job-2", 2.5, cap=8.0)


def test_ledger_concurrent_spends_respect_cap(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.db")
    results: list[bool] = []

    def worker(n: int) -> None:
        try:
            ledger.spend("d.s", f"job-{n}", 1.0, cap=4.0)
            results.append(True)
        except BudgetExhausted:
            results.append(False)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 4
    assert ledger.spent("d.s") == 4.0
