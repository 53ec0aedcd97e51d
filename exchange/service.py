"""The check service: one eligibility check from a domain request to a domain outcome.

It sequences the pure steps of exchange/eligibility.py and the audit events of
exchange/events.py with the ports it is given, and knows nothing of REST, gRPC or SQLite:

    nodes      NodeClient   fan-out to the agencies' nodes, all or nothing (gateway/fanout.py)
    policy     CheckPolicy  decision + probing budget + consent + the tier's view
                            (policies/decision.py CheckAuthorizer; the budget is its BudgetPort)
    auditor    Auditor      appends an event durably before the step it records completes
    clock      Clock        wall-clock seconds (the masks' epoch)
    randomness Randomness   request ids, the cohort view's shuffle and fresh epochs
    compute    HeCompute    where the HE arithmetic runs (inline threads, or worker processes)
    pads       PadPools     one-time pad batches of small packed checks (exchange/pads.py)

Order of refusals: the program's purposes and requesters, the batch size, the exchange mode,
the HE context, and the policy decision last (a malformed request must not spend budget).
Any node failure fails the whole check with an error naming the agency; no partial verdict.
CPU-heavy steps run off the event loop: loading the HE context in a thread, flooding, combining
and masking in the `compute` port (exchange/he_compute.py; worker processes in the gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from crypto.he import SLOTS, PublicContext
from crypto.masks import epoch_of
from exchange import events
from exchange.cohort import COHORT_MEMBER_UNKNOWN, epsilon_per_query, flip_probability
from exchange.eligibility import (
    CheckScope,
    CriterionOutcome,
    attach_pads,
    build_cohort_requests,
    build_requests,
    collect_pads,
    combine_plain,
    flood_counts,
    packing,
    validate_plain_response,
)
from exchange.he_compute import CohortSecrets, CombineJob, HeCompute, InlineHeCompute
from exchange.pads import PadLease, PadPools
from exchange.types import VIEWS, CheckOutcome, CheckRequest, CohortPrivacy, CriterionVerdict, NodeReceipt, View
from policies.check_statements import Question, RequesterKey, verify_statement
from policies.programs import Program, ProgramRegistry
from policies.types import DEFAULT_COHORT_EPSILON, RESERVATION_OWNER, CheckContext, PolicyOutcome
from protos.xgate.v1 import node_pb2
from xgate.errors import (
    ConfigError,
    InvalidInput,
    NodeError,
    NodePadLost,
    NodeRefused,
    PayloadTooLarge,
    PolicyDenied,
)
from xgate.logging import get_logger
from xgate.principal import Principal

log = get_logger("xgate.exchange.service")

Clock = Callable[[], float]
HIDDEN = "one criterion; which one is hidden in this view"


class NodeClient(Protocol):
    """Calls every node concurrently; the first failure cancels the rest and is raised (NodeError).

    `public_context`: the bytes behind the requests' context_fingerprint, sent only to a node that
    does not hold them; `requests[agency]` is then replaced by the request that node answered."""

    async def encrypt_all(
        self,
        requests: MutableMapping[str, node_pb2.EncryptRequest],
        deadline_s: float,
        public_context: bytes = b"",
    ) -> dict[str, node_pb2.EncryptResponse]: ...


class CheckPolicy(Protocol):
    """Raises PolicyDenied / BudgetExhausted, else says which view the caller gets."""

    def authorize_check(self, principal: Principal, program: Program, request: CheckContext) -> PolicyOutcome: ...


class Auditor(Protocol):
    async def record(self, event: dict[str, Any]) -> None: ...


class Randomness(Protocol):
    def request_id(self) -> str: ...

    def shuffle(self, items: list[str]) -> None: ...

    def epoch(self) -> int:
        """A fresh random mask epoch (cohort view: masked values never repeat across queries)."""
        ...

    def flips(self, n: int, p: float) -> np.ndarray:
        """n independent booleans, each True with probability p (cohort view: randomized response)."""
        ...


class SystemRandomness:
    """The production randomness: uuid4 ids, the OS CSPRNG for shuffles and epochs."""

    def request_id(self) -> str:
        return str(uuid.uuid4())

    def shuffle(self, items: list[str]) -> None:
        secrets.SystemRandom().shuffle(items)

    def epoch(self) -> int:
        return secrets.randbits(62)

    def flips(self, n: int, p: float) -> np.ndarray:
        # 53-bit uniforms from the OS CSPRNG (exact in float64), compared with p.
        words = np.frombuffer(os.urandom(8 * n), dtype="<u8") >> np.uint64(11)
        return np.asarray(words.astype(np.float64) < p * float(1 << 53), dtype=bool)


class AllowAll:
    """The policy port of a gateway without a policy set (development): per-criterion view."""

    def authorize_check(self, principal: Principal, program: Program, request: CheckContext) -> PolicyOutcome:
        return PolicyOutcome()


@dataclass
class CheckService:
    programs: ProgramRegistry
    nodes: NodeClient
    mask_key: bytes
    policy: CheckPolicy | None = None
    auditor: Auditor | None = None
    deadline_s: float = 30.0
    max_subjects: int = 100_000
    allow_plaintext_mode: bool = False
    clock: Clock = time.time
    randomness: Randomness | None = None
    timer: Clock = time.perf_counter
    compute: HeCompute = field(default_factory=InlineHeCompute)
    # One-time pad batches for small packed checks (None: every check gets fresh node ciphertexts).
    pads: PadPools | None = field(default_factory=PadPools)
    # The registered requesters' signing keys (policies/requesters.py): each check's statement is
    # verified before the policy decision. None only where no node checks it either (core tests).
    requesters: Callable[[], Mapping[str, RequesterKey]] | None = None

    async def run(
        self,
        principal: Principal,
        request: CheckRequest,
        request_id: str | None = None,
        answered: Callable[[CheckOutcome], None] | None = None,
        owner: str = "",
        fence: Callable[[], None] | None = None,
    ) -> CheckOutcome:
        """``request_id``: the edge's id for this request, so every entry about it carries one id.
        ``answered`` gets the outcome once it is charged, even when the check is cancelled while
        being charged (deadline, client gone): the edge then keeps it for a retry to replay, as
        the requester has paid for it (gateway/routes/checks.py).
        ``owner``: who holds this check's reservations (the edge's Idempotency-Key claim token),
        written into every reservation so a replica taking the claim over can release them.
        ``fence``: called (in a worker thread) right before the charge is committed; it raises
        when the charge must not be made (the claim was taken over meanwhile): everything is
        then released and its error raised, and the answer is not delivered."""
        t0 = self.timer()
        timings: dict[str, float] = {}
        rng = self.randomness or SystemRandomness()
        program = self.programs.get(request.program)
        request_id = request_id or rng.request_id()
        about = events.about_check(request_id, program, request, principal)
        try:
            _check_program(program, principal, request)
        except PolicyDenied as exc:
            await self._record(events.policy_denied(about, exc))
            raise
        context = await self._context(request)
        try:
            self._verify_requester(principal, request, context)
        except PolicyDenied as exc:
            await self._record(events.policy_denied(about, exc))
            raise
        # Policy last among the gateway's own checks: a malformed request must not spend budget.
        # Off the event loop: a large batch's budget transaction must not stall other requests.
        # The reservations' owner travels to the stores in the worker thread's copy of the context.
        owning = RESERVATION_OWNER.set(owner or "chk_" + request_id)
        try:
            deciding = asyncio.ensure_future(
                asyncio.to_thread((self.policy or AllowAll()).authorize_check, principal, program, request)
            )
        finally:
            RESERVATION_OWNER.reset(owning)
        try:
            outcome = await asyncio.shield(deciding)
        except PolicyDenied as exc:
            await self._record(events.policy_denied(about, exc))
            raise
        except asyncio.CancelledError:
            # Abandoned (client gone, deadline passed) while the decision point works in its
            # thread: whatever it reserves is released when it finishes, as nobody gets an answer.
            deciding.add_done_callback(_release_if_reserved)
            raise
        # Budget and consent uses are reserved now and charged only for an answer: any failure from
        # here on (node down or refusing, timeout, a gateway error, cancellation) releases them,
        # except a refusal that answers the request's own question (`charged_refusal`).
        charge = _fenced(outcome, fence)
        try:
            result = await self._answer(principal, request, program, request_id, about, context, outcome, timings, t0)
        except BaseException as exc:
            if charged_refusal(exc):
                await _commit(charge)
            else:
                await _settle(outcome.charge.release)
            raise
        cancelled = await _commit(charge)
        if answered is not None:
            answered(result)
        if cancelled:
            raise asyncio.CancelledError
        return result

    def _verify_requester(self, principal: Principal, request: CheckRequest, context: PublicContext | None) -> None:
        """The requesting user signed this very question, context and subjects (every node checks
        it again): refused here first, so an unsigned check never reaches the decision point."""
        if self.requesters is None:
            return
        fingerprint = context.ref if context is not None else ""
        question = Question.of(principal.user, principal.agency, vars(request), fingerprint)
        verify_statement(
            request.requester_statement, self.requesters(), question, datetime.fromtimestamp(self.clock(), UTC)
        )

    def release_owner(self, owner: str) -> int:
        """Give back what one owner's reservations still hold (a dead attempt whose Idempotency-Key
        claim is being taken over). Blocking: call it off the event loop."""
        release = getattr(self.policy, "release_owner", None)
        return int(release(owner)) if release is not None else 0

    async def _answer(
        self,
        principal: Principal,
        request: CheckRequest,
        program: Program,
        request_id: str,
        about: dict[str, Any],
        context: PublicContext | None,
        outcome: PolicyOutcome,
        timings: dict[str, float],
        t0: float,
    ) -> CheckOutcome:
        rng = self.randomness or SystemRandomness()
        view = _view(outcome)
        await self._record(events.policy_allowed(about, outcome))
        timings["policy"] = self._ms(t0)

        mode = node_pb2.EXCHANGE_MODE_HE if context is not None else node_pb2.EXCHANGE_MODE_PLAINTEXT
        scope = _scope(request_id, principal, request, outcome)
        cohort = _CohortPlan.draw(program, request, outcome, rng) if view == "cohort" and context else None
        pseudonyms = list(request.pseudonyms)
        ref = context.ref if context is not None else ""
        blocks = 0
        epoch: int | None = None  # the cohort view draws a fresh one per query instead
        if cohort is not None:
            # Cohort view: each criterion's subjects go out in their own order only the gateway
            # knows (and with fresh masks), so slots map to no one, are not linked across criteria
            # or queries, and each slot's sign is flipped with the randomized-response probability.
            plans = build_cohort_requests(program, scope, cohort.secrets.orders, ref)
        else:
            # A small batch packs every criterion's result into one ciphertext (the nodes repeat values).
            blocks = packing(program, len(pseudonyms)) if context is not None else 0
            # The nodes clamp terms (docs/PROTOCOL.md "Masks") and tag their values for this
            # epoch (exchange/eligibility.py `criterion_masks`).
            epoch = epoch_of(self.clock(), program.epoch_seconds) if context is not None else None
            plans = [build_requests(program, scope, pseudonyms, mode, ref, replicas=blocks, epoch=epoch)]
        t1 = self.timer()
        # A small packed check uses a window of a one-time pad batch (exchange/pads.py); a node that
        # lost its batch (restarted) fails the first attempt, and the second opens a new batch.
        for attempt in (1, 2):
            lease = None
            if blocks and self.pads is not None:
                n = len(pseudonyms)
                # Per user too: a result's first block tells its reader how many windows came before.
                key = (ref, program.id, program.version, principal.user)
                lease = await self.pads.lease(key, n, n * blocks)
                attach_pads(plans[0], lease.batch, lease.offset, lease.opens)
            # Noise-flooding terms depend only on the requester's key: build them while the nodes work.
            first_block = lease.offset // len(pseudonyms) if lease is not None else 0
            floods = (
                asyncio.ensure_future(
                    self.compute.floods(context.data, flood_counts(program, len(pseudonyms), bool(blocks), first_block))
                )
                if context is not None
                else None
            )
            try:
                answers = await self._fan_out(plans, context.data if context is not None else b"")
                pads = self._pads_of(lease, plans[0], answers[0])
            except BaseException as exc:
                if floods is not None:
                    floods.cancel()
                if lease is not None and self.pads is not None and (lease.opens or isinstance(exc, NodePadLost)):
                    self.pads.discard(lease)
                if isinstance(exc, NodePadLost) and attempt == 1:
                    log.info("pad_batch_lost", request_id=request_id, agency=exc.agency)
                    for sent in plans[0].values():
                        sent.public_context = b""  # nodes hold the context by now: name it again
                    continue
                if isinstance(exc, NodeError):
                    await self._record(events.fanout_failed(about, exc))
                raise
            break
        # Keyed by agency, or in the cohort view (one answer per criterion) by agency/criterion.
        answered = [
            (agency, program.criteria[i].id if cohort is not None else None, events.receipt_of(r))
            for i, responses in enumerate(answers)
            for agency, r in sorted(responses.items())
        ]
        receipts = {(f"{a}/{c}" if c else a): receipt for a, c, receipt in answered}
        # The node's own log entry for each answer: either side can prove what happened. Appended
        # together (one group commit, in agency order), not one fsync after another.
        await asyncio.gather(
            *(
                self._record(events.node_answered(principal, request_id, program, a, receipt, c))
                for a, c, receipt in answered
            )
        )
        timings["fanout"] = self._ms(t1)

        t2 = self.timer()
        prepared = await floods if floods is not None else None
        packed = b""
        if context is not None:
            job = CombineJob(
                program=program,
                context_data=context.data,
                mask_key=self.mask_key,
                epoch=rng.epoch() if epoch is None else epoch,
                plans=tuple(plans),
                answers=tuple(answers),
                pseudonyms=tuple(pseudonyms),
                view=view,
                cohort=cohort.secrets if cohort is not None else None,
                floods=tuple(prepared) if prepared is not None else None,
                pads=pads,
                pad_offset=lease.offset if lease is not None else 0,
            )
            try:
                outcomes, packed = await self.compute.combine(job)
            except NodeError:
                if lease is not None and self.pads is not None:
                    self.pads.discard(lease)  # a pad that does not load spoils its batch
                raise
        else:
            outcomes = _combine_plain(program, plans[0], answers[0], view)
        timings["combine"] = self._ms(t2)
        timings["total"] = self._ms(t0)

        result_sha256 = events.digest_outcomes(outcomes, packed)
        await self._record(
            events.check_result(
                about,
                request,
                program,
                result_sha256=result_sha256,
                context_sha256=context.fingerprint if context else None,
                view=view,
                nodes={agency for responses in answers for agency in responses},
                epsilon=cohort.privacy.epsilon_per_query if cohort is not None else None,
                pads=(lease.batch, lease.offset, pads) if lease is not None and pads is not None else None,
            )
        )
        log.info(
            "check_done",
            request_id=request_id,
            program=program.id,
            mode=request.mode,
            subject_count=len(request.pseudonyms),
            result_sha256=result_sha256,
            ms=timings["total"],
        )
        return CheckOutcome(
            request_id=request_id,
            program=program.id,
            program_version=program.version,
            mode=request.mode,
            view=view,
            subjects=len(request.pseudonyms),
            chunk_size=SLOTS,
            shuffled=view == "cohort",
            criteria=verdicts(program, outcomes),
            packed=(packed,) if packed else (),
            policy_ids=tuple(outcome.policy_ids),
            policy_set_hash=outcome.policy_set_hash,
            nodes=receipts,
            node_bytes=sum(
                plan[a].ByteSize() + r.ByteSize()
                for plan, responses in zip(plans, answers, strict=True)
                for a, r in responses.items()
            ),
            timings_ms=timings,
            privacy=cohort.privacy if cohort is not None else None,
        )

    async def _fan_out(
        self, plans: Sequence[dict[str, node_pb2.EncryptRequest]], public_context: bytes
    ) -> list[dict[str, node_pb2.EncryptResponse]]:
        """Every plan concurrently (the cohort view has one per criterion); all or nothing.
        `public_context`: sent only to a node that does not hold the plans' context fingerprint."""
        if len(plans) == 1:
            return [await self.nodes.encrypt_all(plans[0], self.deadline_s, public_context)]
        tasks = [asyncio.ensure_future(self.nodes.encrypt_all(plan, self.deadline_s, public_context)) for plan in plans]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise

    def _pads_of(
        self,
        lease: PadLease | None,
        plan: Mapping[str, node_pb2.EncryptRequest],
        responses: Mapping[str, node_pb2.EncryptResponse],
    ) -> Mapping[str, bytes] | None:
        """The pad ciphertexts a padded check combines with: the batch's, or, for the check that
        opened it, those its own answers carry (which then release the checks waiting for them)."""
        if lease is None or self.pads is None:
            return None
        if not lease.opens:
            return lease.pads
        opened = collect_pads(plan, responses)
        self.pads.opened(lease, opened)
        return opened

    async def _context(self, request: CheckRequest) -> PublicContext | None:
        if len(request.pseudonyms) > self.max_subjects:
            raise PayloadTooLarge(f"{len(request.pseudonyms)} subjects exceed the limit of {self.max_subjects}")
        if request.mode == "plaintext":
            if not self.allow_plaintext_mode:
                raise PolicyDenied("plaintext exchange mode is disabled on this gateway")
            return None
        if request.mode != "he":
            raise InvalidInput("mode must be 'he' or 'plaintext'")
        if not request.public_context:
            raise InvalidInput("HE mode needs the requester's context_fingerprint (or an inline public_context)")
        return await asyncio.to_thread(PublicContext.cached, request.public_context)

    async def _record(self, event: dict[str, Any]) -> None:
        if self.auditor is not None:
            await self.auditor.record(event)

    def _ms(self, since: float) -> float:
        return round((self.timer() - since) * 1000, 2)


def charged_refusal(exc: BaseException) -> bool:
    """A node refusal that is itself an answer about the request's subjects, so it is charged like
    one: the register node refusing a cohort with a member it does not know tells whether a
    candidate is registered, and a free refusal would make that a free membership oracle."""
    return isinstance(exc, NodeRefused) and exc.details.get("refusal") == COHORT_MEMBER_UNKNOWN


def _release_if_reserved(decided: asyncio.Future[PolicyOutcome]) -> None:
    """Done-callback of an abandoned policy step: release what it reserved, in a worker thread."""
    if decided.cancelled() or decided.exception() is not None:
        return  # refused or failed: nothing was reserved
    release = decided.result().charge.release

    def run() -> None:
        try:
            release()
        except Exception:  # nobody awaits this: say so in the log rather than lose it silently
            log.exception("abandoned_check_release_failed")

    asyncio.get_running_loop().run_in_executor(None, run)


def _fenced(outcome: PolicyOutcome, fence: Callable[[], None] | None) -> Callable[[], None]:
    """The check's charge: the fence first (its refusal releases everything), then the commit."""

    def charge() -> None:
        if fence is not None:
            try:
                fence()
            except BaseException:
                outcome.charge.release()
                raise
        outcome.charge.commit()

    return charge


async def _commit(commit: Callable[[], None]) -> bool:
    """Charge an answered check off the event loop, to the end even when the check is cancelled
    meanwhile (returns True then): once the answer exists, a cancelled commit must not leave it
    charged as a pending reservation yet thrown away. Fails closed: a commit that fails (a
    reservation whose lease ran out, a revocation on record, a storage error, a lost claim) has
    released everything, and its error is raised instead of the answer (policies/decision.py
    `Reservations.commit`): an answer is never delivered uncharged."""
    task = asyncio.ensure_future(asyncio.to_thread(commit))
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            return cancelled
        except asyncio.CancelledError:
            cancelled = True  # the thread is committing: wait for it, then report the cancellation
        except Exception as exc:
            log.warning("charge_commit_failed", error=type(exc).__name__)
            raise


async def _settle(release: Callable[[], None]) -> None:
    """Release a check's reservations off the event loop, even when the check is being cancelled."""
    task = asyncio.ensure_future(asyncio.to_thread(release))
    with contextlib.suppress(asyncio.CancelledError):  # the shielded release still completes in its thread
        await asyncio.shield(task)


def _check_program(program: Program, principal: Principal, request: CheckRequest) -> None:
    if request.purpose not in program.header.purposes:
        raise PolicyDenied(f"purpose '{request.purpose}' is not a purpose of program '{program.id}'")
    if principal.agency not in program.header.requester_agencies:
        raise PolicyDenied(f"agency '{principal.agency}' may not request program '{program.id}'")


def _view(outcome: PolicyOutcome) -> View:
    if outcome.view not in VIEWS:
        raise ConfigError(f"the decision point returned an unknown view '{outcome.view}'")
    return outcome.view


def _scope(request_id: str, principal: Principal, request: CheckRequest, outcome: PolicyOutcome) -> CheckScope:
    return CheckScope(
        request_id=request_id,
        requester_agency=principal.agency,
        requester_user=principal.user,
        requester_role=principal.role,
        requester_tier=principal.tier,
        purpose=request.purpose,
        legal_basis=request.legal_basis,
        case_id=request.case_id,
        consent_ref=request.consent_ref,
        approval_ref=request.approval_ref,
        policy_set_hash=outcome.policy_set_hash,
        consent_artefact=outcome.consent_artefact,
        approval_artefact=outcome.approval_artefact,
        requester_statement=request.requester_statement,
    )


@dataclass(frozen=True)
class _CohortPlan:
    """The cohort view's secrets for one query: per criterion a subject order and the slots to flip."""

    secrets: CohortSecrets
    privacy: CohortPrivacy

    @classmethod
    def draw(cls, program: Program, request: CheckRequest, outcome: PolicyOutcome, rng: Randomness) -> _CohortPlan:
        spend = outcome.privacy
        eps = spend.epsilon_per_criterion if spend is not None else DEFAULT_COHORT_EPSILON
        p = flip_probability(eps)
        orders = []
        for _ in program.criteria:
            order = list(request.pseudonyms)
            rng.shuffle(order)
            orders.append(tuple(order))
        k, n = len(program.criteria), len(request.pseudonyms)
        privacy = CohortPrivacy(
            epsilon_per_criterion=eps,
            flip_probability=p,
            epsilon_per_query=epsilon_per_query(eps, k),
            period_spent=spend.spent if spend is not None else None,
            period_cap=spend.cap if spend is not None else None,
        )
        return cls(CohortSecrets(tuple(orders), tuple(rng.flips(n, p) for _ in range(k))), privacy)


def _combine_plain(
    program: Program,
    node_requests: Mapping[str, node_pb2.EncryptRequest],
    responses: Mapping[str, node_pb2.EncryptResponse],
    view: View,
) -> list[CriterionOutcome]:
    values = {}
    for agency, response in responses.items():
        values.update(validate_plain_response(agency, node_requests[agency], response))
    if view != "per_criterion":
        raise PolicyDenied("the plaintext baseline serves the per-criterion view only")
    return combine_plain(program, values)


def verdicts(program: Program, outcomes: Sequence[CriterionOutcome]) -> tuple[CriterionVerdict, ...]:
    """The caller's view of each outcome: a hidden-order view names no criterion."""
    descriptions = {c.id: c.description for c in program.criteria}
    return tuple(
        CriterionVerdict(
            criterion=o.criterion,
            description=descriptions.get(o.criterion, HIDDEN),
            ciphertexts=o.ciphertexts,
            passes=o.passes if not o.ciphertexts and o.block is None else None,
            block=o.block,
        )
        for o in outcomes
    )


__all__ = ["AllowAll", "Auditor", "CheckPolicy", "CheckService", "NodeClient", "NodeReceipt", "Randomness"]
