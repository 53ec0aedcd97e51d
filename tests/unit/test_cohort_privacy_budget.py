"""The bronze (cohort view) ε budget per (requesting agency, program) and period: reserve, commit,
release, refusal, atomic under threads, on SQLite and on PostgreSQL (two replicas' pools)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.budgets import COHORT_PRIVACY_MIGRATIONS, CohortPrivacyBudget
from tests.postgres import reset_component
from xgate.db import PostgresDatabase, migrate
from xgate.errors import BudgetExhausted, ConfigError, InvalidInput

PROGRAM, AGENCY, PERIOD = "target_discovery", "civil_affairs", 681


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> CohortPrivacyBudget:
    return CohortPrivacyBudget(tmp_path / "eps.sqlite")


@pytest.fixture
def pg_ledgers(pg_url: str) -> Iterator[tuple[CohortPrivacyBudget, CohortPrivacyBudget]]:
    a, b = PostgresDatabase(pg_url, max_size=6), PostgresDatabase(pg_url, max_size=6)
    reset_component(a, "cohort_privacy", "cohort_epsilon", "cohort_epsilon_reservations")
    migrate(a, COHORT_PRIVACY_MIGRATIONS)
    try:
        yield CohortPrivacyBudget(a), CohortPrivacyBudget(b)
    finally:
        a.close()
        b.close()


def test_reserve_commit_and_refuse_when_the_period_is_spent(sqlite_ledger: CohortPrivacyBudget) -> None:
    first = sqlite_ledger.reserve(PROGRAM, AGENCY, PERIOD, 3.0, 7.0)
    assert (first.spent, first.cap, first.period) == (3.0, 7.0, PERIOD)
    assert sqlite_ledger.commit(first.reservation) is True and sqlite_ledger.commit(first.reservation) is False
    second = sqlite_ledger.reserve(PROGRAM, AGENCY, PERIOD, 3.0, 7.0)
    assert second.spent == 6.0
    with pytest.raises(BudgetExhausted, match=r"privacy budget exhausted.*spent epsilon 6 of 7.*needs 3") as info:
        sqlite_ledger.reserve(PROGRAM, AGENCY, PERIOD, 3.0, 7.0)
    assert info.value.details["period"] == PERIOD and sqlite_ledger.spent(PROGRAM, AGENCY, PERIOD) == 6.0
    # other periods, programs and agencies have budgets of their own
    assert sqlite_ledger.reserve(PROGRAM, AGENCY, PERIOD + 1, 3.0, 7.0).spent == 3.0
    assert sqlite_ledger.reserve("dibao", AGENCY, PERIOD, 3.0, 7.0).spent == 3.0
    assert sqlite_ledger.reserve(PROGRAM, "tax", PERIOD, 3.0, 7.0).spent == 3.0


def test_a_released_reservation_gives_its_epsilon_back_once(sqlite_ledger: CohortPrivacyBudget) -> None:
    held = sqlite_ledger.reserve(PROGRAM, AGENCY, PERIOD, 3.0, 3.0)
    with pytest.raises(BudgetExhausted):
        sqlite_ledger.reserve(PROGRAM, AGENCY, PERIOD, 3.0, 3.0)  # a pending reservation counts
    assert sqlite_ledger.pending() == 1
    assert sqlite_ledger.release(held.reservation) is True and sqlite_ledger.release(held.reservation) is False
    assert sqlite_ledger.spent(PROGRAM, AGENCY, PERIOD) == 0.0 and sqlite_ledger.pending() == 0
    kept = sqlite_ledger.reserve(PROGRAM, AGENCY, PERIOD, 3.0, 3.0)
    assert sqlite_ledger.commit(kept.reservation) and sqlite_ledger.release(kept.reservation) is False
    assert sqlite_ledger.spent(PROGRAM, AGENCY, PERIOD) == 3.0  # a committed spend is never given back


@pytest.mark.parametrize(("epsilon", "cap"), [(0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (1.0, 0.0)])
def test_bad_epsilon_is_refused(sqlite_ledger: CohortPrivacyBudget, epsilon: float, cap: float) -> None:
    with pytest.raises(InvalidInput, match="positive finite"):
        sqlite_ledger.reserve(PROGRAM, AGENCY, PERIOD, epsilon, cap)


def _race(ledgers: list[CohortPrivacyBudget], threads: int, attempts: int, epsilon: float, cap: float) -> int:
    granted = 0
    guard = threading.Lock()
    start = threading.Barrier(threads)

    def worker(ledger: CohortPrivacyBudget) -> None:
        nonlocal granted
        start.wait()
        for k in range(attempts):
            try:
                held = ledger.reserve(PROGRAM, AGENCY, PERIOD, epsilon, cap)
            except BudgetExhausted:
                continue
            if k % 3 == 0:  # some checks fail after the reservation: their ε comes back
                assert ledger.release(held.reservation)
                continue
            assert ledger.commit(held.reservation)
            with guard:
                granted += 1

    pool = [threading.Thread(target=worker, args=(ledgers[n % len(ledgers)],)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return granted


def _settled_exactly(ledger: CohortPrivacyBudget, granted: int) -> None:
    """Spent is exactly what was committed (releases gave back all they held), and exactly the
    rest of the cap can still be reserved."""
    assert 1 <= granted <= 10 and ledger.pending() == 0
    assert ledger.spent(PROGRAM, AGENCY, PERIOD) == pytest.approx(3.0 * granted)
    for _ in range(10 - granted):
        ledger.commit(ledger.reserve(PROGRAM, AGENCY, PERIOD, 3.0, 30.0).reservation)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(PROGRAM, AGENCY, PERIOD, 3.0, 30.0)


def test_concurrent_reservations_never_pass_the_cap_sqlite(sqlite_ledger: CohortPrivacyBudget) -> None:
    granted = _race([sqlite_ledger], threads=8, attempts=6, epsilon=3.0, cap=30.0)
    _settled_exactly(sqlite_ledger, granted)


def test_concurrent_reservations_on_two_postgres_replicas_never_pass_the_cap(
    pg_ledgers: tuple[CohortPrivacyBudget, CohortPrivacyBudget],
) -> None:
    a, b = pg_ledgers
    granted = _race([a, b], threads=8, attempts=6, epsilon=3.0, cap=30.0)
    _settled_exactly(b, granted)
    assert a.spent(PROGRAM, AGENCY, PERIOD) == pytest.approx(30.0)
    held = a.reserve(PROGRAM, AGENCY, PERIOD + 1, 1.5, 2.0)
    assert b.release(held.reservation) is True and a.release(held.reservation) is False


def test_replicated_mode_refuses_an_unmigrated_epsilon_schema(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    try:
        reset_component(db, "cohort_privacy", "cohort_epsilon", "cohort_epsilon_reservations")
        with pytest.raises(ConfigError, match=r"cohort_privacy v1, cohort_privacy v2 pending"):
            CohortPrivacyBudget(db)
    finally:
        db.close()


def test_the_decision_point_reserves_epsilon_for_bronze_only_and_refuses_when_spent(tmp_path: Path) -> None:
    """CheckAuthorizer: a bronze target_discovery query reserves ε per criterion x criteria in the
    program's period; the refusal gives the probing budget back; gold spends no ε."""
    from datetime import timedelta

    from policies.budgets import ProbeBudget
    from policies.catalogue import load_catalogue
    from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
    from policies.programs import ProgramRegistry
    from policies.types import DEFAULT_COHORT_EPSILON, DEFAULT_COHORT_EPSILON_PER_PERIOD
    from tests.unit.test_approvals import STANDING_REF, standing_registry
    from tests.unit.test_budgets import pseudo
    from tests.unit.test_policy_support import DAYTIME
    from xgate.principal import Principal

    engine = PolicyEngine.load(DEFAULT_POLICY_DIR)
    program = ProgramRegistry.load(DEFAULT_POLICY_DIR / "programs", load_catalogue()[0]).get("target_discovery")
    ledger, probes = CohortPrivacyBudget(tmp_path / "eps.sqlite"), ProbeBudget(tmp_path / "b.sqlite")
    pdp = CheckAuthorizer(
        engine, budgets=probes, approvals=standing_registry(tmp_path / "a.db"), privacy=ledger, clock=lambda: DAYTIME
    )
    bronze = Principal("ca-caseworker-bronze", "civil_affairs", "caseworker", "bronze")
    per_query = DEFAULT_COHORT_EPSILON * len(program.criteria)
    period = int(DAYTIME.timestamp() // program.epoch_seconds)

    class Ask:
        def __init__(self, start: int) -> None:
            self.purpose, self.legal_basis, self.case_id = "target_discovery", "SAR-2014-art-12", "C-1"
            self.consent_ref, self.approval_ref = "", STANDING_REF
            self.pseudonyms = tuple(pseudo(start + i) for i in range(10))

    answered = int(DEFAULT_COHORT_EPSILON_PER_PERIOD // per_query)
    for q in range(answered):
        outcome = pdp.authorize_check(bronze, program, Ask(10 * q))
        assert outcome.view == "cohort" and outcome.privacy is not None
        assert outcome.privacy.epsilon == per_query and outcome.privacy.spent == pytest.approx(per_query * (q + 1))
        outcome.charge.commit()
    with pytest.raises(BudgetExhausted, match="privacy budget exhausted") as refused:
        pdp.authorize_check(bronze, program, Ask(1000))
    renews = (period + 1) * program.epoch_seconds  # the program's next epoch: Retry-After says so
    assert refused.value.details["retry_after_s"] == math.ceil(renews - DAYTIME.timestamp())
    rule = pdp.decide_check(bronze, program.id, [t.element for t in program.elements()], Ask(1000), DAYTIME)
    if rule.budget is not None:  # the refused query holds no probing budget either
        later = DAYTIME + timedelta(seconds=1)
        assert probes.used(pseudo(1000), program.id, "civil_affairs", rule.budget, later) == 0
    assert ledger.spent(program.id, "civil_affairs", period) == pytest.approx(per_query * answered)
    gold = Principal("ca-caseworker-gold", "civil_affairs", "caseworker", "gold")
    assert pdp.authorize_check(gold, program, Ask(2000)).privacy is None


def test_a_bronze_check_that_fails_at_the_nodes_spends_no_epsilon(tmp_path: Path, requester_keys: object) -> None:
    """Through the real check service: a node down releases the query's ε; an answer commits it."""
    import asyncio

    from bench.privacy import _FailingNodes
    from exchange.service import CheckService
    from exchange.types import CheckRequest
    from policies.catalogue import load_catalogue
    from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
    from policies.programs import ProgramRegistry
    from tests.unit.test_approvals import STANDING_REF, standing_registry
    from tests.unit.test_budgets import pseudo
    from tests.unit.test_policy_support import DAYTIME
    from xgate.errors import NodeUnavailable
    from xgate.principal import Principal

    programs = ProgramRegistry.load(DEFAULT_POLICY_DIR / "programs", load_catalogue()[0])
    program = programs.get("target_discovery")
    ledger = CohortPrivacyBudget(tmp_path / "eps.sqlite")
    pdp = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR),
        approvals=standing_registry(tmp_path / "a.db"),
        privacy=ledger,
        clock=lambda: DAYTIME,
    )
    service = CheckService(
        programs=programs, nodes=_FailingNodes(NodeUnavailable("household", "unreachable")), mask_key=b"\x01" * 32,
        policy=pdp,
    )  # fmt: skip
    request = CheckRequest(
        "target_discovery", "target_discovery", "SAR-2014-art-12", "C-1", tuple(pseudo(i) for i in range(10)),
        public_context=requester_keys.public_context,  # type: ignore[attr-defined]
        approval_ref=STANDING_REF,
    )  # fmt: skip
    bronze = Principal("ca-caseworker-bronze", "civil_affairs", "caseworker", "bronze")
    for _ in range(3):
        with pytest.raises(NodeUnavailable):
            asyncio.run(service.run(bronze, request))
    period = int(DAYTIME.timestamp() // program.epoch_seconds)
    assert ledger.spent(program.id, "civil_affairs", period) == 0.0 and ledger.pending() == 0


def test_epsilon_settings_defaults_program_overrides_and_refusals(tmp_path: Path) -> None:
    """settings.toml [tiers] gives the defaults; a program's [program] overrides them; nonsense is
    refused when the policy set loads (a clear error naming the setting)."""
    import dataclasses

    from policies.catalogue import load_catalogue
    from policies.decision import DEFAULT_POLICY_DIR, PolicyEngine
    from policies.programs import ProgramRegistry
    from policies.types import DEFAULT_COHORT_EPSILON, DEFAULT_COHORT_EPSILON_PER_PERIOD
    from tests.unit.test_policy_support import copy_policies

    program = ProgramRegistry.load(DEFAULT_POLICY_DIR / "programs", load_catalogue()[0]).get("target_discovery")
    engine = PolicyEngine.load(DEFAULT_POLICY_DIR)
    assert engine.cohort_epsilon(program) == (DEFAULT_COHORT_EPSILON, DEFAULT_COHORT_EPSILON_PER_PERIOD)
    header = program.header.model_copy(update={"bronze_epsilon_per_criterion": 0.25, "bronze_epsilon_per_period": 2.0})
    assert engine.cohort_epsilon(dataclasses.replace(program, header=header)) == (0.25, 2.0)
    for bad in ("bronze_epsilon_per_criterion = 0", "bronze_epsilon_per_criterion = 50.0"):
        root = copy_policies(tmp_path / f"p-{len(list(tmp_path.iterdir()))}")
        settings = root / "settings.toml"
        settings.write_text(settings.read_text().replace("bronze_epsilon_per_criterion = 1.0", bad))
        with pytest.raises(ConfigError, match="bronze_epsilon_per_criterion"):
            PolicyEngine.load(root)
