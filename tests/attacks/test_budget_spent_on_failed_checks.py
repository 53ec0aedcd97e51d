"""Attack (issue 13, item 6): burn someone's probing budget (or a one-time consent) with checks
that fail, or rely on failures costing the requester nothing in a budget sense while wearing
the subject's allowance down for everyone else.

The budget used to be charged before the fan-out and never refunded: three attempts that failed
with a node down used up the 30-day budget. Now the decision point reserves, the check service
commits only when the check is answered and releases on any failure (node down, timeout, node
refusal, a malformed answer, the requester going away, also while the decision point is still
working in its thread). This runs the real decision point, the
real SQLite budget and consent registry, and the check service with a fan-out that fails.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from exchange.service import CheckService
from policies.budgets import ProbeBudget
from policies.consent import ConsentRegistry
from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
from policies.types import BudgetRule, PolicyOutcome
from tests.unit.test_approvals import STANDING_REF, standing_registry
from tests.unit.test_check_service import (
    GOLD,
    MASK_KEY,
    SUBJECTS,
    FakeAuditor,
    FakeNodes,
    FixedRandomness,
    _impersonates,
    _request,
)
from tests.unit.test_policy_support import DAYTIME
from xgate.errors import (
    BudgetExhausted,
    NodeError,
    NodeRefused,
    NodeTimeout,
    NodeUnavailable,
    PolicyDenied,
    StoreUnavailable,
)

APPROVALS = standing_registry(Path(tempfile.mkdtemp(prefix="xgate-attack-")) / "approvals.db")
RULE = BudgetRule(max_checks=3, window_days=30, policy_id="")
FAILURES = [
    NodeUnavailable("hrss", "unreachable (connection refused)"),
    NodeTimeout("household", "did not answer before the deadline"),
    NodeRefused("tax", "refused by its policy"),
]


def _service(programs, budgets: ProbeBudget, consents: ConsentRegistry | None, nodes: FakeNodes) -> CheckService:
    engine = PolicyEngine.load(DEFAULT_POLICY_DIR)
    policy = CheckAuthorizer(engine, budgets=budgets, consents=consents, approvals=APPROVALS, clock=lambda: DAYTIME)
    return CheckService(
        programs=programs,
        nodes=nodes,
        mask_key=MASK_KEY,
        policy=policy,
        auditor=FakeAuditor(),
        allow_plaintext_mode=True,
        clock=lambda: DAYTIME.timestamp(),
        randomness=FixedRandomness(),
    )


def _used(budgets: ProbeBudget, subject: str) -> int:
    return budgets.used(subject, "dibao", "civil_affairs", RULE, DAYTIME + timedelta(minutes=1))


def test_failed_checks_spend_no_budget(programs, tmp_path: Path) -> None:
    budgets = ProbeBudget(tmp_path / "b.db")
    approved_before = APPROVALS.lookup(STANDING_REF).uses
    for failure in FAILURES * 3:  # nine failures: three times the cap
        with pytest.raises(NodeError):
            asyncio.run(_service(programs, budgets, None, FakeNodes(fail=failure)).run(GOLD, _request()))
    garbled = FakeNodes(garble=_impersonates)  # answered, but malformed: a gateway-side failure
    with pytest.raises(NodeError):
        asyncio.run(_service(programs, budgets, None, garbled).run(GOLD, _request()))
    assert all(_used(budgets, s) == 0 for s in SUBJECTS) and budgets.pending() == 0
    assert APPROVALS.lookup(STANDING_REF).uses == approved_before  # nor a count-scoped approval's subjects
    asyncio.run(_service(programs, budgets, None, FakeNodes()).run(GOLD, _request()))
    assert all(_used(budgets, s) == 1 for s in SUBJECTS) and budgets.pending() == 0
    assert APPROVALS.lookup(STANDING_REF).uses == approved_before + len(SUBJECTS)


def test_a_check_abandoned_mid_fanout_spends_no_budget(programs, tmp_path: Path) -> None:
    budgets = ProbeBudget(tmp_path / "b.db")
    service = _service(programs, budgets, None, FakeNodes(delay_s=5.0))

    async def abandon() -> None:
        task = asyncio.create_task(service.run(GOLD, _request()))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # the shielded release finishes in its thread

    asyncio.run(abandon())
    assert all(_used(budgets, s) == 0 for s in SUBJECTS) and budgets.pending() == 0


def test_answered_checks_still_hit_the_cap(programs, tmp_path: Path) -> None:
    budgets = ProbeBudget(tmp_path / "b.db")
    for _ in range(3):
        asyncio.run(_service(programs, budgets, None, FakeNodes()).run(GOLD, _request()))
    with pytest.raises(BudgetExhausted):
        asyncio.run(_service(programs, budgets, None, FakeNodes()).run(GOLD, _request()))


def test_a_one_time_consent_survives_failed_checks(programs, tmp_path: Path) -> None:
    consents = ConsentRegistry(tmp_path / "c.db", purposes={"income_certificate"})
    subject = SUBJECTS[0]
    ref = consents.register(
        subject, "civil_affairs", "income_certificate", DAYTIME - timedelta(days=1), DAYTIME + timedelta(days=1), 1
    )
    budgets = ProbeBudget(tmp_path / "b.db")
    request = _request(
        program="income_certificate",
        purpose="income_certificate",
        legal_basis="PIPL-2021-art-13-1",
        pseudonyms=(subject,),
        consent_ref=ref,
    )
    for failure in FAILURES:
        with pytest.raises(NodeError):
            asyncio.run(_service(programs, budgets, consents, FakeNodes(fail=failure)).run(GOLD, request))
    assert consents.lookup(ref).uses == 0
    asyncio.run(_service(programs, budgets, consents, FakeNodes()).run(GOLD, request))
    assert consents.lookup(ref).uses == 1
    with pytest.raises(PolicyDenied, match="one-time consent already used"):
        asyncio.run(_service(programs, budgets, consents, FakeNodes()).run(GOLD, request))


class _ChargeUpFront:
    """Positive control: the replaced behaviour (consume before the fan-out, never refund)."""

    def __init__(self, budgets: ProbeBudget) -> None:
        self.budgets = budgets

    def authorize_check(self, principal, program, request) -> PolicyOutcome:
        self.budgets.consume(request.pseudonyms, program.id, principal.agency, RULE, DAYTIME)
        return PolicyOutcome()


def test_charging_up_front_lets_failures_burn_the_budget(programs, tmp_path: Path) -> None:
    budgets = ProbeBudget(tmp_path / "b.db")
    service = _service(programs, budgets, None, FakeNodes(fail=FAILURES[0]))
    service.policy = _ChargeUpFront(budgets)
    for _ in range(3):
        with pytest.raises(NodeUnavailable):
            asyncio.run(service.run(GOLD, _request()))
    assert all(_used(budgets, s) == 3 for s in SUBJECTS)


def test_a_check_abandoned_while_the_policy_step_runs_spends_nothing(programs: Any, tmp_path: Path) -> None:
    """The client goes away while the decision point is reserving in its worker thread (a large
    batch makes that window wide): the reservation must be released once the step finishes."""
    import threading

    reserved, go_on = threading.Event(), threading.Event()

    class SlowConsents(ConsentRegistry):
        def reserve(self, *args: Any, **kwargs: Any) -> Any:
            reservation = super().reserve(*args, **kwargs)
            reserved.set()
            go_on.wait(10)  # the rest of a big batch's work in the policy thread
            return reservation

    consents = SlowConsents(tmp_path / "consents.db", purposes={"income_certificate"})
    subject = SUBJECTS[0]
    ref = consents.register(
        subject, "civil_affairs", "income_certificate", DAYTIME - timedelta(days=1), DAYTIME + timedelta(days=1), 1
    )
    budgets = ProbeBudget(tmp_path / "budget.db")
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR), budgets=budgets, consents=consents,
        approvals=standing_registry(tmp_path / "approvals.db"), clock=lambda: DAYTIME,
    )  # fmt: skip
    service = CheckService(
        programs=programs, nodes=FakeNodes(), mask_key=MASK_KEY, policy=policy, auditor=FakeAuditor(),
        allow_plaintext_mode=True, clock=lambda: DAYTIME.timestamp(),
    )  # fmt: skip
    request = _request(
        program="income_certificate", purpose="income_certificate", legal_basis="PIPL-2021-art-13-1",
        pseudonyms=(subject,), consent_ref=ref,
    )  # fmt: skip

    async def abandon() -> None:
        task = asyncio.create_task(service.run(GOLD, request))
        await asyncio.to_thread(reserved.wait, 10)  # the consent use and the budget are reserved now
        task.cancel()  # the client disconnects while authorize_check still runs
        with pytest.raises(asyncio.CancelledError):
            await task
        go_on.set()
        for _ in range(200):  # the step finishes in its thread, then its release runs
            if consents.lookup(ref).uses == 0 and budgets.pending() == 0:
                return
            await asyncio.sleep(0.05)

    asyncio.run(abandon())
    assert consents.lookup(ref).uses == 0 and budgets.pending() == 0


def test_a_check_cancelled_while_its_charge_commits_is_charged_once_and_its_answer_kept(
    programs: Any, tmp_path: Path
) -> None:
    """The deadline (or a disconnect) lands while the answered check's charge is being committed:
    the commit used to be cancellable there, the answer was thrown away and the route freed the
    idempotency key, so the retry computed and charged again (or found the one-time consent used).
    Now the commit finishes, the service hands the answer over (`answered`) and reports the
    cancellation; the route keeps it for the retry (tests/unit/test_idempotency_route.py)."""
    import threading

    committing, go_on = threading.Event(), threading.Event()

    class SlowCommit(ProbeBudget):
        def commit(self, reservation: str) -> bool:
            committing.set()
            go_on.wait(10)  # a store slow for a moment: a lock wait, a PostgreSQL round trip
            return super().commit(reservation)

    budgets = SlowCommit(tmp_path / "b.db")
    service = _service(programs, budgets, None, FakeNodes())
    answered: list[Any] = []

    async def cancel_while_committing() -> None:
        task = asyncio.create_task(service.run(GOLD, _request(), answered=answered.append))
        await asyncio.to_thread(committing.wait, 10)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # it waits for the commit rather than leave it half made
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_while_committing())
    assert len(answered) == 1 and answered[0].subjects == len(SUBJECTS)
    assert all(_used(budgets, s) == 1 for s in SUBJECTS) and budgets.pending() == 0


def test_a_store_failing_to_commit_withholds_the_answer_and_charges_nothing(programs: Any, tmp_path: Path) -> None:
    """A commit that raises fails closed: a reservation left pending is given back by the reaper
    once its lease runs out (policies/budgets.py), so an answer delivered on it would go out
    uncharged. The check fails with a retryable error and releases what it held (before: the
    answer stood, charged only as long as the pending reservation stayed counted)."""

    class FailingCommit(ProbeBudget):
        def commit(self, reservation: str) -> bool:
            raise OSError("database is locked")

    budgets = FailingCommit(tmp_path / "b.db")
    with pytest.raises(StoreUnavailable):
        asyncio.run(_service(programs, budgets, None, FakeNodes()).run(GOLD, _request()))
    assert all(_used(budgets, s) == 0 for s in SUBJECTS) and budgets.pending() == 0
