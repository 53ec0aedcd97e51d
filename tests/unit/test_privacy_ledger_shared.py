"""The gateway's training ε ledger (policies/budgets.py PrivacyLedger) in the replicas' database:
a dataset's cap holds across replicas, not once per replica.

Attack: two replicas each charging their own ledger would accept cap-worth of ε at each, so N
replicas would spend N times a dataset's cap. Here eight jobs race through two ledger handles on
one PostgreSQL database (two pools, as two gateway processes have): exactly cap / ε succeed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from policies.budgets import PRIVACY_LEDGER_MIGRATIONS, PrivacyLedger
from tests.postgres import reset_component
from xgate.db import PostgresDatabase, migrate
from xgate.errors import BudgetExhausted, ConfigError


def test_two_replicas_racing_one_dataset_never_spend_past_its_cap(pg_url: str) -> None:
    a, b = PostgresDatabase(pg_url, max_size=4), PostgresDatabase(pg_url, max_size=4)
    try:
        reset_component(a, "privacy_ledger", "spends")
        migrate(a, PRIVACY_LEDGER_MIGRATIONS)
        ledgers = [PrivacyLedger(a), PrivacyLedger(b)]
        accepted: list[str] = []
        refused: list[str] = []
        start = threading.Barrier(8)

        def job(n: int) -> None:
            start.wait()
            try:
                ledgers[n % 2].spend("medical.claims_2025", f"job-{n}", 1.0, cap=3.0)
                accepted.append(f"job-{n}")
            except BudgetExhausted:
                refused.append(f"job-{n}")

        threads = [threading.Thread(target=job, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(accepted) == 3 and len(refused) == 5
        assert ledgers[0].spent("medical.claims_2025") == pytest.approx(3.0)
        assert ledgers[1].spent("medical.claims_2025") == pytest.approx(3.0)
        assert sorted(s.job_id for s in ledgers[1].spends()) == sorted(accepted)
        # ε sums stay exact in PostgreSQL (DOUBLE PRECISION, not 4-byte REAL)
        ledgers[0].spend("hrss.contributions_2025", "fine", 0.1, cap=8.0)
        assert ledgers[1].spent("hrss.contributions_2025") == 0.1
    finally:
        a.close()
        b.close()


def test_a_replica_refuses_to_start_on_an_unmigrated_ledger(pg_url: str) -> None:
    db = PostgresDatabase(pg_url, max_size=2)
    try:
        reset_component(db, "privacy_ledger", "spends")
        with pytest.raises(ConfigError, match="xgate gateway migrate"):
            PrivacyLedger(db)
    finally:
        db.close()


def test_the_embedded_ledger_is_a_sqlite_file_and_reads_back(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "privacy.sqlite")
    ledger.spend_all("job-1", [("a.x", 1.5, 4.0), ("b.y", 0.5, 1.0)])
    with pytest.raises(BudgetExhausted):
        ledger.spend_all("job-2", [("a.x", 1.0, 4.0), ("b.y", 0.6, 1.0)])  # all or nothing
    assert ledger.spent("a.x") == 1.5 and [s.job_id for s in ledger.spends()] == ["job-1", "job-1"]
    assert PrivacyLedger(tmp_path / "privacy.sqlite").spent("b.y") == 0.5  # reopened: migrations are idempotent
