"""Budgets and consents exact across replicas: two gateways' stores on one PostgreSQL database.

Each "replica" has its own connection pool, as two gateway processes would. Threads on both race
batches over overlapping subjects (no subject may ever be charged past the cap, every release
gives back exactly what was reserved) and a one-time consent (used exactly once).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from policies.budgets import BUDGET_MIGRATIONS, ProbeBudget
from policies.consent import CONSENT_MIGRATIONS, ConsentRegistry
from policies.types import BudgetRule
from tests.unit.test_budgets import pseudo
from xgate.db import PostgresDatabase, migrate
from xgate.errors import BudgetExhausted, ConfigError, PolicyDenied

RULE = BudgetRule(max_checks=3, window_days=30, policy_id="dibao-tax-monthly-income")
T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


@pytest.fixture
def replicas(pg_url: str) -> Iterator[tuple[ProbeBudget, ProbeBudget]]:
    a, b = PostgresDatabase(pg_url, max_size=6), PostgresDatabase(pg_url, max_size=6)
    with a.transaction() as tx:
        tx.execute("DROP TABLE IF EXISTS probe_windows, probe_reservations, xgate_schema")
    migrate(a, BUDGET_MIGRATIONS)
    try:
        yield ProbeBudget(a), ProbeBudget(b)
    finally:
        a.close()
        b.close()


def test_replicated_mode_refuses_a_schema_that_was_not_migrated(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    try:
        with db.transaction() as tx:
            tx.execute("DROP TABLE IF EXISTS probe_windows, probe_reservations, xgate_schema")
        with pytest.raises(
            ConfigError, match=r"probe_budget v1, probe_budget v2 pending\): run `xgate gateway migrate`"
        ):
            ProbeBudget(db)
    finally:
        db.close()


def test_two_replicas_racing_the_same_subjects_never_over_spend(replicas: tuple[ProbeBudget, ProbeBudget]) -> None:
    subjects = [pseudo(500 + i) for i in range(6)]
    granted: Counter[str] = Counter()
    guard = threading.Lock()
    start = threading.Barrier(8)

    def worker(budget: ProbeBudget, n: int) -> None:
        start.wait()
        for k in range(6):
            batch = [subjects[(n + k) % 6], subjects[(n + 2 * k + 1) % 6]]
            try:
                budget.consume(batch, "dibao", "civil_affairs", RULE, T0 + timedelta(seconds=n * 100 + k))
            except BudgetExhausted:
                continue
            with guard:
                granted.update(set(batch))

    threads = [threading.Thread(target=worker, args=(replicas[n % 2], n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    later = T0 + timedelta(days=1)
    for s in subjects:
        assert granted[s] <= RULE.max_checks
        assert replicas[0].used(s, "dibao", "civil_affairs", RULE, later) == granted[s]
        assert replicas[1].used(s, "dibao", "civil_affairs", RULE, later) == granted[s]
    assert sum(granted.values()) > 0  # the race actually charged something


def test_a_reservation_made_on_one_replica_is_released_on_the_other(
    replicas: tuple[ProbeBudget, ProbeBudget],
) -> None:
    a, b = replicas
    s = pseudo(600)
    held = a.reserve([s], "dibao", "civil_affairs", RULE, T0)
    assert b.used(s, "dibao", "civil_affairs", RULE, T0 + timedelta(hours=1)) == 1
    assert b.release(held.reservation) is True
    assert a.release(held.reservation) is False  # released once, whoever asks again
    assert a.used(s, "dibao", "civil_affairs", RULE, T0 + timedelta(hours=1)) == 0
    kept = b.reserve([s], "dibao", "civil_affairs", RULE, T0 + timedelta(minutes=1))
    assert a.commit(kept.reservation) is True and b.pending() == 0


@pytest.fixture
def consent_replicas(pg_url: str) -> Iterator[tuple[ConsentRegistry, ConsentRegistry]]:
    a, b = PostgresDatabase(pg_url, max_size=6), PostgresDatabase(pg_url, max_size=6)
    with a.transaction() as tx:
        tx.execute("DROP TABLE IF EXISTS consents, consent_uses, consent_reservations")
        tx.execute("DELETE FROM xgate_schema WHERE component = 'consent_registry'")
    migrate(a, CONSENT_MIGRATIONS)
    try:
        yield ConsentRegistry(a), ConsentRegistry(b)
    finally:
        a.close()
        b.close()


def test_a_one_time_consent_raced_through_two_replicas_is_used_once(
    consent_replicas: tuple[ConsentRegistry, ConsentRegistry],
) -> None:
    a, b = consent_replicas
    subject = pseudo(700)
    ref = a.register(subject, "civil_affairs", "income_certificate", T0, T0 + timedelta(days=30), max_uses=1)
    wins: list[str] = []
    guard = threading.Lock()
    start = threading.Barrier(8)

    def take(registry: ConsentRegistry) -> None:
        start.wait()
        try:
            reservation = registry.reserve(ref, subject, "civil_affairs", "income_certificate", T0 + timedelta(hours=1))
        except PolicyDenied:
            return
        with guard:
            wins.append(reservation)

    threads = [threading.Thread(target=take, args=((a, b)[n % 2],)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    # released on the other replica (the check failed, not the requester's fault): usable once more
    assert b.release(wins[0]) is True
    assert a.lookup(ref).uses == 0
    again = b.reserve(ref, subject, "civil_affairs", "income_certificate", T0 + timedelta(hours=2))
    assert a.commit(again) is True
    with pytest.raises(PolicyDenied, match="one-time consent already used"):
        a.reserve(ref, subject, "civil_affairs", "income_certificate", T0 + timedelta(hours=3))
