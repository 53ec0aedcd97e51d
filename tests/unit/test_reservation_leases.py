"""Reservations that outlive their check: a gateway killed mid-check, a claim taken over, a store
error, a revocation while the check runs (review of 2026-12-06, F1-F5).

Real stores on SQLite and PostgreSQL (two handles on one database = two gateway replicas). A
dead gateway is simulated by reserving and never committing; the time its lease needs to run out
is a second handle whose clock stands past the lease (the live handles use the database's clock).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from exchange.service import CheckService
from gateway.idempotency import IDEMPOTENCY_MIGRATIONS, Claim, IdempotencyStore, request_digest
from policies.approvals import APPROVAL_MIGRATIONS, ApprovalRegistry
from policies.budgets import BUDGET_MIGRATIONS, COHORT_PRIVACY_MIGRATIONS, CohortPrivacyBudget, ProbeBudget
from policies.consent import CONSENT_MIGRATIONS, ConsentRegistry
from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
from policies.programs import ProgramRegistry
from policies.silver_claims import SILVER_CLAIM_MIGRATIONS, SilverClaims
from policies.types import BudgetRule
from protos.xgate.v1 import node_pb2
from tests.unit.test_approvals import APPROVERS, NOW, STANDING_REF, approval, standing_registry
from tests.unit.test_check_service import GOLD, MASK_KEY, SUBJECTS, FakeNodes, FixedRandomness, _request
from tests.unit.test_policy_support import DAYTIME
from xgate.db import Database, PostgresDatabase, migrate
from xgate.errors import IdempotencyInProgress, PolicyDenied, StoreUnavailable

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 100.0
RULE = BudgetRule(1, 30, "test-one-per-month")
OWNER = "civil_affairs/cw-zhang"
KEY = "0f5c7a52-3f0e-4f6d-9d0a-6c1b2e3d4f50"
DIGEST = request_digest("POST /v1/checks", {"program": "dibao"})
MIGRATIONS = (
    *BUDGET_MIGRATIONS,
    *COHORT_PRIVACY_MIGRATIONS,
    *CONSENT_MIGRATIONS,
    *APPROVAL_MIGRATIONS,
    *SILVER_CLAIM_MIGRATIONS,
    *IDEMPOTENCY_MIGRATIONS,
)
TABLES = (
    "probe_windows, probe_reservations, cohort_epsilon, cohort_epsilon_reservations, consents, consent_uses, "
    "consent_reservations, approvals, approval_reservations, silver_claims, idempotency_keys"
)
COMPONENTS = ("probe_budget", "cohort_privacy", "consent_registry", "approval_registry", "silver_claims", "idempotency")


def past_the_lease() -> float:
    """A clock standing past every lease taken now (the database runs on this host's clock)."""
    return time.time() + LEASE_S + 60


@dataclass
class Stores:
    """One gateway replica's stores, all on one database."""

    budgets: ProbeBudget
    privacy: CohortPrivacyBudget
    consents: ConsentRegistry
    approvals: ApprovalRegistry
    claims: SilverClaims


@dataclass
class Target:
    """Where the replicas' state lives; `replica(clock)` opens one more replica on it."""

    kind: str
    where: Path | str
    handles: list[PostgresDatabase] = field(default_factory=list)

    def database(self) -> Path | Database:
        if self.kind == "sqlite":
            assert isinstance(self.where, Path)
            return self.where
        db = PostgresDatabase(str(self.where), max_size=4)
        self.handles.append(db)
        return db

    def store(self, name: str) -> Path | Database:
        db = self.database()
        return db / f"{name}.sqlite" if isinstance(db, Path) else db

    def replica(self, clock: Callable[[], float] | None = None) -> Stores:
        lease = {"lease_s": LEASE_S, "lease_clock": clock}
        return Stores(
            budgets=ProbeBudget(self.store("budgets"), **lease),  # type: ignore[arg-type]
            privacy=CohortPrivacyBudget(self.store("epsilon"), **lease),  # type: ignore[arg-type]
            consents=ConsentRegistry(self.store("consents"), **lease),  # type: ignore[arg-type]
            approvals=ApprovalRegistry(self.store("approvals"), approvers=APPROVERS, **lease),  # type: ignore[arg-type]
            claims=SilverClaims(self.store("claims"), **lease),  # type: ignore[arg-type]
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "sqlite":
        yield Target("sqlite", tmp_path)
        return
    url: str = request.getfixturevalue("pg_url")
    admin = PostgresDatabase(url, max_size=2)
    try:
        with admin.transaction() as tx:
            tx.execute(f"DROP TABLE IF EXISTS {TABLES}")
            tx.execute(
                "CREATE TABLE IF NOT EXISTS xgate_schema (component TEXT NOT NULL, version INTEGER NOT NULL,"
                " PRIMARY KEY (component, version))"
            )
            for component in COMPONENTS:
                tx.execute("DELETE FROM xgate_schema WHERE component = ?", (component,))
        migrate(admin, MIGRATIONS)
    finally:
        admin.close()
    found = Target("postgresql", url)
    try:
        yield found
    finally:
        for db in found.handles:
            db.close()


def _consent(consents: ConsentRegistry, subject: str = SUBJECTS[0], uses: int = 1) -> str:
    return consents.register(
        subject, "civil_affairs", "income_certificate", DAYTIME - timedelta(days=1), DAYTIME + timedelta(days=1), uses
    )


# --- F1: a gateway killed mid-check -----------------------------------------------------------------


def test_a_dead_gateways_reservations_are_given_back_once_their_lease_runs_out(target: Target) -> None:
    """Before: every reservation of a check whose gateway died stayed charged forever (the probing
    budget, the cohort ε, a one-time consent, an approval's subjects, silver claims)."""
    dead = target.replica()  # the database's clock
    subject = SUBJECTS[0]
    ref = _consent(dead.consents)
    counted = dead.approvals.register_signed(approval(max_subjects=1)).ref
    held: list[tuple[Any, str]] = [
        (dead.budgets, dead.budgets.reserve([subject], "dibao", "civil_affairs", RULE, DAYTIME).reservation),
        (dead.privacy, dead.privacy.reserve("target_discovery", "civil_affairs", 7, 3.0, 3.0).reservation),
        (dead.consents, dead.consents.reserve(ref, subject, "civil_affairs", "income_certificate", DAYTIME)),
        (
            dead.approvals,
            dead.approvals.reserve(
                counted, agency="civil_affairs", program="dibao", case_id="C-1", subjects=[subject], now=NOW
            ),
        ),
        (
            dead.claims,
            dead.claims.reserve(
                [subject],
                program="dibao",
                claim="dibao@1",
                overlaps=["target_discovery"],
                agency="civil_affairs",
                now=DAYTIME.timestamp(),
                window_days=365,
            ),
        ),
    ]  # ... and the gateway is killed: nothing is committed or released

    def reserve_all(replica: Stores) -> None:
        replica.budgets.reserve([subject], "dibao", "civil_affairs", RULE, DAYTIME + timedelta(seconds=1))
        replica.privacy.reserve("target_discovery", "civil_affairs", 7, 3.0, 3.0)
        replica.consents.reserve(ref, subject, "civil_affairs", "income_certificate", DAYTIME)
        replica.approvals.reserve(
            counted, agency="civil_affairs", program="dibao", case_id="C-1", subjects=[subject], now=NOW
        )
        replica.claims.reserve(
            [subject],
            program="target_discovery",
            claim="target_discovery@1",
            overlaps=["dibao"],
            agency="civil_affairs",
            now=DAYTIME.timestamp(),
            window_days=365,
        )

    live = target.replica()
    with pytest.raises(PolicyDenied):  # within the lease the dead check's reservations hold
        reserve_all(live)
    later = target.replica(clock=past_the_lease)
    reserve_all(later)  # the lease ran out: each was given back, under its scope's lock, and taken again
    assert later.consents.lookup(ref).uses == 1 and later.approvals.lookup(counted).uses == 1
    for store, reservation in held:  # the dead check's late commit fails closed
        assert not store.commit(reservation), type(store).__name__


def test_a_check_whose_lease_ran_out_is_not_answered_and_charges_nothing(
    programs: ProgramRegistry, tmp_path: Path
) -> None:
    """The commit of a reservation reaped meanwhile fails closed: no answer goes out uncharged."""
    now = [time.time()]
    budgets = ProbeBudget(tmp_path / "budgets.sqlite", lease_s=LEASE_S, lease_clock=lambda: now[0])
    approvals = standing_registry(tmp_path / "approvals.sqlite")
    approvals.lease_s, approvals._lease_clock = LEASE_S, lambda: now[0]  # this gateway's clock
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR), budgets=budgets, approvals=approvals, clock=lambda: DAYTIME
    )

    def slow_nodes() -> None:
        now[0] += LEASE_S + 1  # the check outlives its lease: another replica reaps it
        budgets.reap()

    service = _service(programs, policy, Hooked(before=slow_nodes))
    with pytest.raises(StoreUnavailable, match="ran out before it was answered"):
        asyncio.run(service.run(GOLD, _request(pseudonyms=SUBJECTS[:2])))
    assert budgets.used(SUBJECTS[0], "dibao", "civil_affairs", BudgetRule(3, 30, ""), DAYTIME) == 0
    assert budgets.pending() == 0 and approvals.lookup(STANDING_REF).uses == 0


# --- F1/F2: Idempotency-Key claims ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _idempotency(target: Target, clock: Callable[[], float] | None, stale_after_s: float) -> IdempotencyStore:
    timing: dict[str, Any] = {"clock": clock} if clock is not None else {}  # default: the database's clock
    return IdempotencyStore(target.store("idempotency"), stale_after_s=stale_after_s, **timing)


def test_a_claim_taken_over_gives_the_dead_attempts_reservations_back(target: Target) -> None:
    """Before: the retry on another replica was refused (or charged again) while the dead attempt's
    one-time consent stayed taken."""
    clock = Clock()
    a, b = _idempotency(target, clock, 30), _idempotency(target, clock, 30)
    stores = target.replica()
    ref = _consent(stores.consents)
    first = a.begin(OWNER, KEY, DIGEST)
    assert isinstance(first, Claim)
    stores.consents.reserve(ref, SUBJECTS[0], "civil_affairs", "income_certificate", DAYTIME, owner=first.token)
    clock.now += 31  # the gateway holding it died; its claim is stale
    taken = b.begin(OWNER, KEY, DIGEST)
    assert isinstance(taken, Claim) and taken.superseded == first.token
    policy = CheckAuthorizer(PolicyEngine.load(DEFAULT_POLICY_DIR), consents=stores.consents)
    assert policy.release_owner(taken.superseded) == 1
    stores.consents.reserve(ref, SUBJECTS[0], "civil_affairs", "income_certificate", DAYTIME, owner=taken.token)
    assert stores.consents.lookup(ref).uses == 1
    with pytest.raises(IdempotencyInProgress, match="took the check over"):
        a.fence(first)  # the dead attempt, were it alive after all, is fenced off
    b.fence(taken)


def test_a_claim_is_stale_when_its_claimant_said_not_by_the_taker_overs_settings(target: Target) -> None:
    """Replicas mid rolling config change: a (checks up to 90 s) claims, b (35 s) must wait for a's
    bound (before: b took the claim over after 35 s and both answered and charged the key)."""
    clock = Clock()
    a, b = _idempotency(target, clock, 90), _idempotency(target, clock, 35)
    assert isinstance(a.begin(OWNER, KEY, DIGEST), Claim)
    clock.now += 40
    with pytest.raises(IdempotencyInProgress) as busy:
        b.begin(OWNER, KEY, DIGEST)
    assert 0 < busy.value.details["retry_after_s"] <= 1.0
    clock.now += 51
    assert isinstance(b.begin(OWNER, KEY, DIGEST), Claim)


SKEWED = """
import sys, time
real = time.time
time.time = lambda: real() + 600  # this replica's clock runs ten minutes ahead
from gateway.idempotency import Claim, IdempotencyStore
from xgate.db import PostgresDatabase
from xgate.errors import IdempotencyInProgress
where = sys.argv[1]
store = IdempotencyStore(PostgresDatabase(where) if where.startswith("postgresql") or "dbname=" in where else where,
                         stale_after_s=60)
try:
    print("took-over" if isinstance(store.begin(sys.argv[2], sys.argv[3], sys.argv[4]), Claim) else "replayed")
except IdempotencyInProgress:
    print("in-progress")
"""


def test_a_replica_whose_clock_runs_ahead_does_not_take_a_live_claim_over(target: Target) -> None:
    """Staleness is decided by the database's clock (before: by the taking-over replica's own)."""
    live = _idempotency(target, None, 60)
    assert isinstance(live.begin(OWNER, KEY, DIGEST), Claim)
    where = str(target.store("idempotency")) if target.kind == "sqlite" else str(target.where)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    skewed = subprocess.run(
        [sys.executable, "-c", SKEWED, where, OWNER, KEY, DIGEST], capture_output=True, text=True, env=env, timeout=60
    )
    assert skewed.stdout.strip().splitlines()[-1:] == ["in-progress"], skewed.stderr[-2000:]


def test_a_fenced_off_check_releases_everything_and_is_not_answered(programs: ProgramRegistry, tmp_path: Path) -> None:
    """The charge is fenced by the claim: an attempt whose claim was taken over meanwhile commits
    nothing and delivers nothing (before: both attempts answered and charged)."""
    clock = Clock()
    a = IdempotencyStore(tmp_path / "idempotency.sqlite", clock=clock, stale_after_s=30)
    b = IdempotencyStore(tmp_path / "idempotency.sqlite", clock=clock, stale_after_s=30)
    budgets = ProbeBudget(tmp_path / "budgets.sqlite")
    approvals = standing_registry(tmp_path / "approvals.sqlite")
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR), budgets=budgets, approvals=approvals, clock=lambda: DAYTIME
    )
    claim = a.begin(OWNER, KEY, DIGEST)
    assert isinstance(claim, Claim)

    def taken_over() -> None:
        clock.now += 31
        assert isinstance(b.begin(OWNER, KEY, DIGEST), Claim)

    service = _service(programs, policy, Hooked(before=taken_over))
    run = service.run(GOLD, _request(pseudonyms=SUBJECTS[:2]), owner=claim.token, fence=lambda: a.fence(claim))
    with pytest.raises(IdempotencyInProgress):
        asyncio.run(run)
    assert budgets.pending() == 0 and approvals.lookup(STANDING_REF).uses == 0
    assert budgets.used(SUBJECTS[0], "dibao", "civil_affairs", BudgetRule(3, 30, ""), DAYTIME) == 0


# --- F3: a store error after the reservations -------------------------------------------------------


class ArtefactUnreadable(ConsentRegistry):
    def artefact(self, ref: str) -> str:
        raise StoreUnavailable("PostgreSQL unavailable: PoolTimeout")


def test_a_store_error_reading_the_artefacts_leaves_nothing_reserved(target: Target, tmp_path: Path) -> None:
    """Before: the artefacts were read after every reservation and outside any release, so a
    storage error there kept the probing budget and the one-time consent spent."""
    budgets = ProbeBudget(target.store("budgets"))
    consents = ArtefactUnreadable(target.store("consents"))
    ref = _consent(consents)
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR),
        budgets=budgets,
        consents=consents,
        approvals=standing_registry(tmp_path / "approvals-f3.sqlite"),
        clock=lambda: DAYTIME,
    )
    program = ProgramRegistry.load(DEFAULT_POLICY_DIR / "programs", _catalogue()).get("income_certificate")
    request = _request(
        program="income_certificate",
        purpose="income_certificate",
        legal_basis="PIPL-2021-art-13-1",
        pseudonyms=(SUBJECTS[0],),
        consent_ref=ref,
    )
    with pytest.raises(StoreUnavailable):
        policy.authorize_check(GOLD, program, request)
    assert budgets.pending() == 0 and consents.lookup(ref).uses == 0


def _catalogue() -> Any:
    from policies.catalogue import load_catalogue

    return load_catalogue()[0]


# --- F4: a revocation while the check runs ----------------------------------------------------------


@pytest.mark.parametrize("what", ["consent", "approval"])
def test_a_revocation_while_the_check_runs_withholds_its_answer(
    what: str, programs: ProgramRegistry, tmp_path: Path
) -> None:
    """Before: the nodes answered after the revocation and the verdict was delivered."""
    budgets = ProbeBudget(tmp_path / "budgets.sqlite")
    consents = ConsentRegistry(tmp_path / "consents.sqlite")
    approvals = standing_registry(tmp_path / "approvals.sqlite")
    ref = _consent(consents, uses=5)
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR),
        budgets=budgets,
        consents=consents,
        approvals=approvals,
        clock=lambda: DAYTIME,
    )
    if what == "consent":
        request = _request(
            program="income_certificate",
            purpose="income_certificate",
            legal_basis="PIPL-2021-art-13-1",
            pseudonyms=(SUBJECTS[0],),
            consent_ref=ref,
        )
        revoke: Callable[[], Any] = lambda: consents.revoke(ref)  # noqa: E731
    else:
        request = _request(pseudonyms=SUBJECTS[:2])
        revoke = lambda: approvals.revoke(STANDING_REF)  # noqa: E731
    nodes = Hooked(before=revoke)  # revoked through another replica while the nodes work
    service = _service(programs, policy, nodes)
    with pytest.raises(PolicyDenied, match=r"revoked .* while the check ran"):
        asyncio.run(service.run(GOLD, request))
    assert nodes.answered  # the nodes did answer: the verdict existed and was withheld
    assert consents.lookup(ref).uses == 0 and approvals.lookup(STANDING_REF).uses == 0
    assert budgets.pending() == 0
    assert budgets.used(SUBJECTS[0], request.program, "civil_affairs", BudgetRule(3, 30, ""), DAYTIME) == 0


# --- F5: training honours a revocation stamped ahead --------------------------------------------------


def test_training_honours_a_revocation_stamped_by_a_replica_whose_clock_runs_ahead(tmp_path: Path) -> None:
    registry = ApprovalRegistry(tmp_path / "approvals.sqlite", approvers=APPROVERS)
    ref = registry.register_signed(
        approval(programs=[], datasets=["medical.claims_2025"], max_subjects=None, case_ids=None, case_id_prefix="")
    ).ref
    registry.revoke(ref, now=NOW + timedelta(seconds=60))  # stamped by a replica 60 s ahead
    with pytest.raises(PolicyDenied, match="revoked by its approver"):
        registry.verify_training(ref, agency="civil_affairs", datasets=["medical.claims_2025"], job_id="j-1", now=NOW)


# --- helpers ------------------------------------------------------------------------------------------


@dataclass
class Hooked(FakeNodes):
    """Honest nodes that run `before` (in a worker thread) before they answer."""

    before: Callable[[], Any] | None = None
    answered: bool = False

    async def encrypt_all(
        self, requests: Mapping[str, node_pb2.EncryptRequest], deadline_s: float, public_context: bytes = b""
    ) -> dict[str, node_pb2.EncryptResponse]:
        if self.before is not None:
            await asyncio.to_thread(self.before)
        out = await super().encrypt_all(requests, deadline_s, public_context)
        self.answered = True
        return out


class Events:
    """Keeps the audit events (the real log's validation is tested elsewhere)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def record(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def _service(programs: ProgramRegistry, policy: CheckAuthorizer, nodes: FakeNodes) -> CheckService:
    return CheckService(
        programs=programs,
        nodes=nodes,
        mask_key=MASK_KEY,
        policy=policy,
        auditor=Events(),
        allow_plaintext_mode=True,
        clock=lambda: DAYTIME.timestamp(),
        randomness=FixedRandomness(),
    )


@pytest.mark.parametrize("trigger", ["approval_revoked", "budget_lease_ran_out", "budget_store_error"])
def test_a_withheld_answer_leaves_the_one_time_consent_unused(
    trigger: str, programs: ProgramRegistry, tmp_path: Path
) -> None:
    """Second review: the consent committed first, so a later failure (the approval revoked, the
    budget's lease run out, a storage error on the budget's commit) withheld the answer but left
    the one-time consent used, and the retry the 503 invites was refused. A revocation is now
    looked for before anything is charged, and the consent and approval commit last."""
    now = [time.time()]
    budgets = ProbeBudget(tmp_path / "budgets.sqlite", lease_s=100, lease_clock=lambda: now[0])
    consents = ConsentRegistry(tmp_path / "consents.sqlite", lease_s=100)
    approvals = standing_registry(tmp_path / "approvals.sqlite")
    ref = _consent(consents, uses=1)  # one-time
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR), budgets=budgets, consents=consents, approvals=approvals,
        clock=lambda: DAYTIME,
    )  # fmt: skip
    request = _request(
        program="income_certificate", purpose="income_certificate", legal_basis="PIPL-2021-art-13-1",
        pseudonyms=(SUBJECTS[0],), consent_ref=ref,
    )  # fmt: skip
    before: Callable[[], Any] | None = None
    if trigger == "approval_revoked":
        before = lambda: approvals.revoke(STANDING_REF)  # noqa: E731
    elif trigger == "budget_lease_ran_out":

        def before() -> None:
            now[0] += 101  # the budget's lease only: the consent's stands on the database's clock

    else:
        real, failed = budgets.commit, []

        def flaky(reservation: str) -> bool:
            if not failed:
                failed.append(True)
                raise StoreUnavailable("database is locked")
            return real(reservation)

        budgets.commit = flaky  # type: ignore[method-assign]
    nodes = Hooked(before=before)
    with pytest.raises((PolicyDenied, StoreUnavailable)):
        asyncio.run(_service(programs, policy, nodes).run(GOLD, request))
    assert nodes.answered and consents.lookup(ref).uses == 0  # withheld, and the consent still unused
    if trigger != "approval_revoked":  # the retry the 503 invites is answered
        asyncio.run(_service(programs, policy, Hooked()).run(GOLD, request))
        assert consents.lookup(ref).uses == 1


def test_more_dead_reservations_than_one_reaping_batch_refuse_no_one(tmp_path: Path) -> None:
    """Second review: a reap gave back at most 100, so after a crash that left 150 the live check of
    a subject whose dead reservation was not among them was refused for 30 days."""
    rule = BudgetRule(1, 30, "one-per-30-days")
    dead = ProbeBudget(tmp_path / "budgets.sqlite", lease_s=90)
    subjects = [f"subject-{i:03d}" for i in range(150)]
    for subject in subjects:  # in flight when their gateways died
        dead.reserve([subject], "dibao", "civil_affairs", rule, owner="dead-attempt")
    later = ProbeBudget(tmp_path / "budgets.sqlite", lease_s=90, lease_clock=lambda: time.time() + 3600)
    for subject in reversed(subjects):
        later.reserve([subject], "dibao", "civil_affairs", rule)  # none refused


def test_a_claim_of_an_earlier_version_is_not_judged_by_its_replicas_clock(target: Target) -> None:
    """Second review, rolling upgrade: a claim written by an earlier version (no stale_at, claimed_at
    from its replica's own clock, here two minutes behind the database) was taken over at once by a
    new replica, and the old one, which has no fence, answered and charged the key too."""
    clock = Clock()
    new = _idempotency(target, clock, 90)
    assert isinstance(new.begin(OWNER, KEY, DIGEST), Claim)
    with new.db.transaction() as tx:  # as the earlier version left it
        tx.execute("UPDATE idempotency_keys SET stale_at = NULL, claimed_at = ?", (clock.now - 120,))
    with pytest.raises(IdempotencyInProgress):  # its staleness counts from when it is first seen
        new.begin(OWNER, KEY, DIGEST)
    clock.now += 91
    assert isinstance(new.begin(OWNER, KEY, DIGEST), Claim)  # abandoned after the bound: taken over


@pytest.mark.parametrize("failure", ["revoked_after_the_look", "storage_error"])
def test_an_approval_failing_at_commit_leaves_the_one_time_consent_unused(failure: str, tmp_path: Path) -> None:
    """Third review: the consent committed before the approval, so an approval revoked just after
    the look (or its database failing) withheld the answer with the one-time consent used up."""
    from policies.decision import Reservations

    consents = ConsentRegistry(tmp_path / "consents.sqlite")
    ref = _consent(consents, uses=1)
    reservation = consents.reserve(ref, SUBJECTS[0], "civil_affairs", "income_certificate", DAYTIME)

    class FailingApprovals:
        def revoked(self, reservation: str) -> bool:
            return False  # not yet, at the look

        def commit(self, reservation: str) -> bool:
            if failure == "storage_error":
                raise StoreUnavailable("database is locked")
            raise PolicyDenied("the approval was revoked by its approver while the check ran")

        def release(self, reservation: str) -> bool:
            return True

    charge = Reservations(
        consents=consents, consent_reservation=reservation,
        approvals=FailingApprovals(), approval_reservation="ars_x",  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises((PolicyDenied, StoreUnavailable)):
        charge.commit()
    assert consents.lookup(ref).uses == 0  # the consent's use given back: the retry can be answered
