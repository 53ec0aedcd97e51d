"""Coordinate one eligibility check: validate, decide, fan out, combine, record.

Pure steps live in exchange/eligibility.py; this module sequences them with the I/O (fan-out,
policy, budgets, audit) and runs CPU-heavy HE work off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from crypto.he import SLOTS, PublicContext
from crypto.masks import epoch_of
from exchange.eligibility import (
    CheckScope,
    CriterionOutcome,
    build_requests,
    combine_he,
    combine_plain,
    validate_he_response,
    validate_plain_response,
)
from gateway.fanout import NodeDirectory
from gateway.models import CheckRequest, CheckResponse, CriterionResult
from policies.programs import Program, ProgramRegistry
from policies.types import PolicyOutcome
from protos.xgate.v1 import node_pb2
from xgate.errors import InvalidInput, NodeError, PayloadTooLarge, PolicyDenied
from xgate.logging import get_logger
from xgate.principal import Principal

log = get_logger("xgate.gateway")


class CheckPolicy(Protocol):
    def authorize_check(self, principal: Principal, program: Program, request: CheckRequest) -> PolicyOutcome: ...


class Auditor(Protocol):
    async def record(self, event: dict[str, Any]) -> None: ...


def digest_outcomes(outcomes: list[CriterionOutcome]) -> str:
    h = hashlib.sha256()
    for outcome in outcomes:
        h.update(outcome.criterion.encode())
        for blob in outcome.ciphertexts:
            h.update(hashlib.sha256(blob).digest())
        h.update(bytes(outcome.passes))
    return h.hexdigest()


@dataclass
class CheckCoordinator:
    programs: ProgramRegistry
    nodes: NodeDirectory
    mask_key: bytes
    deadline_s: float = 30.0
    max_subjects: int = 100_000
    allow_plaintext_mode: bool = False
    policy: CheckPolicy | None = None
    auditor: Auditor | None = None
    clock: Callable[[], float] = time.time
    _inflight: set[str] = field(default_factory=set)

    async def run(self, principal: Principal, request: CheckRequest) -> CheckResponse:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        program = self.programs.get(request.program)
        request_id = str(uuid.uuid4())
        actor = {"actor_user": principal.user, "actor_agency": principal.agency, "actor_role": principal.role}
        about = {
            "request_id": request_id,
            "program": program.id,
            "purpose": request.purpose,
            "legal_basis": request.legal_basis,
            "case_id": request.case_id,
            "approval_ref": request.approval_ref or None,
            "consent_ref": request.consent_ref or None,
            "subjects": list(request.pseudonyms),
            **actor,
        }
        try:
            if request.purpose not in program.header.purposes:
                raise PolicyDenied(f"purpose '{request.purpose}' is not a purpose of program '{program.id}'")
            if principal.agency not in program.header.requester_agencies:
                raise PolicyDenied(f"agency '{principal.agency}' may not request program '{program.id}'")
        except PolicyDenied as exc:
            await self._record_denial(about, exc)
            raise
        if len(request.pseudonyms) > self.max_subjects:
            raise PayloadTooLarge(f"{len(request.pseudonyms)} subjects exceed the limit of {self.max_subjects}")
        if request.mode == "plaintext" and not self.allow_plaintext_mode:
            raise PolicyDenied("plaintext exchange mode is disabled on this gateway")
        context: PublicContext | None = None
        context_bytes = b""
        if request.mode == "he":
            try:
                context_bytes = request.context_bytes()
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            if not context_bytes:
                raise InvalidInput("HE mode needs the requester's public_context")
            context = await asyncio.to_thread(PublicContext.cached, context_bytes)
        # Policy last among the gateway's own checks: a malformed request must not spend budget.
        try:
            # Off the event loop: a large batch's budget transaction must not stall other requests.
            outcome = (
                await asyncio.to_thread(self.policy.authorize_check, principal, program, request)
                if self.policy is not None
                else PolicyOutcome()
            )
        except PolicyDenied as exc:
            await self._record_denial(about, exc)
            raise
        await self._record(
            {
                **about,
                "kind": "policy_decision",
                "decision": "allow",
                "policy_ids": list(outcome.policy_ids),
                "policy_set_hash": outcome.policy_set_hash or None,
                "view": outcome.view,
            }
        )
        timings["policy"] = _ms(t0)
        scope = CheckScope(
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
        )
        mode = node_pb2.EXCHANGE_MODE_HE if context is not None else node_pb2.EXCHANGE_MODE_PLAINTEXT
        # Cohort view: subjects go out in an order only the gateway knows (and with fresh masks),
        # so the requester's slots map to no one and cannot be linked across queries.
        shuffled = outcome.view == "cohort"
        pseudonyms = list(request.pseudonyms)
        if shuffled:
            secrets.SystemRandom().shuffle(pseudonyms)
        node_requests = build_requests(program, scope, pseudonyms, mode, context_bytes)
        t1 = time.perf_counter()
        try:
            responses = await self.nodes.encrypt_all(node_requests, self.deadline_s)
        except NodeError as exc:
            await self._record({**about, "kind": "fanout_call", "node": exc.agency, "error": exc.code})
            raise
        response_sha256 = {a: _message_sha256(r) for a, r in responses.items()}
        # The node's own log entry for each answer: either side can prove what happened. Appended
        # together (one group commit, in agency order), not one fsync after another.
        await asyncio.gather(
            *(
                self._record(
                    {
                        **actor,
                        "kind": "node_response",
                        "request_id": request_id,
                        "program": program.id,
                        "node": agency,
                        "node_audit_index": response.node_audit_index,
                        "node_entry_sha256": response.node_audit_leaf_hash.hex() or None,
                        "response_sha256": response_sha256[agency],
                    }
                )
                for agency, response in sorted(responses.items())
            )
        )
        timings["fanout"] = _ms(t1)

        t2 = time.perf_counter()
        if context is not None:
            outcomes = await asyncio.to_thread(
                self._combine_he, program, pseudonyms, node_requests, responses, context, outcome.view
            )
        else:
            values = {}
            for agency, response in responses.items():
                values.update(validate_plain_response(agency, node_requests[agency], response))
            outcomes = combine_plain(program, values)
            if outcome.view != "per_criterion":
                raise PolicyDenied("the plaintext baseline serves the per-criterion view only")
        timings["combine"] = _ms(t2)
        timings["total"] = _ms(t0)

        result_digest = digest_outcomes(outcomes)
        nodes_meta = {
            agency: {
                "node_audit_index": r.node_audit_index,
                "node_audit_leaf_hash": r.node_audit_leaf_hash.hex(),
                "response_sha256": response_sha256[agency],
            }
            for agency, r in sorted(responses.items())
        }
        # The policy_decision entry of this request lists the subjects; the result binds to that
        # exact list by digest instead of indexing 10,000 pseudonyms a second time.
        await self._record(
            {
                **{k: v for k, v in about.items() if k != "subjects"},
                "subjects_sha256": subjects_digest(request.pseudonyms),
                "subject_count": len(request.pseudonyms),
                "kind": "result",
                "program_version": program.version,
                "program_sha256": program.sha256,
                "result_sha256": result_digest,
                "context_sha256": context.fingerprint if context else None,
                "view": outcome.view,
                "mode": request.mode,
                "nodes": tuple(sorted(responses)),
            }
        )
        log.info(
            "check_done",
            request_id=scope.request_id,
            program=program.id,
            mode=request.mode,
            subjects=len(request.pseudonyms),
            result_sha256=result_digest,
            ms=timings["total"],
        )
        descriptions = {c.id: c.description for c in program.criteria}
        return CheckResponse(
            request_id=scope.request_id,
            program=program.id,
            program_version=program.version,
            mode=request.mode,
            view=outcome.view,  # type: ignore[arg-type]
            subjects=len(request.pseudonyms),
            chunk_size=SLOTS,
            shuffled=shuffled,
            criteria=[
                CriterionResult(
                    criterion=o.criterion,
                    description=descriptions.get(o.criterion, "one criterion; which one is hidden in this view"),
                    ciphertexts=[_b64(b) for b in o.ciphertexts],
                    passes=list(o.passes) if not o.ciphertexts else None,
                )
                for o in outcomes
            ],
            policy={"policy_ids": list(outcome.policy_ids), "policy_set_hash": outcome.policy_set_hash},
            node_bytes=sum(node_requests[a].ByteSize() + r.ByteSize() for a, r in responses.items()),
            nodes=nodes_meta,
            timings_ms=timings,
        )

    async def _record_denial(self, about: dict[str, Any], exc: PolicyDenied) -> None:
        reasons = exc.details.get("reasons") or [exc.message]
        await self._record(
            {
                **about,
                "kind": "policy_decision",
                "decision": "deny",
                "reason": exc.code,
                "reasons": tuple(str(r) for r in reasons),
                "policy_set_hash": str(exc.details.get("policy_set_hash", "")) or None,
            }
        )

    async def _record(self, event: dict[str, Any]) -> None:
        if self.auditor is not None:
            await self.auditor.record({k: v for k, v in event.items() if v is not None})

    def _combine_he(
        self,
        program: Program,
        pseudonyms: list[str],
        node_requests: dict[str, node_pb2.EncryptRequest],
        responses: dict[str, node_pb2.EncryptResponse],
        context: PublicContext,
        view: str,
    ) -> list[CriterionOutcome]:
        ciphertexts = {}
        for agency, response in responses.items():
            ciphertexts.update(validate_he_response(agency, node_requests[agency], response, context))
        # Cohort view: a fresh random "epoch" per query, so masked values never repeat across queries.
        epoch = epoch_of(self.clock(), program.epoch_seconds) if view != "cohort" else secrets.randbits(62)
        return combine_he(program, pseudonyms, context, ciphertexts, self.mask_key, epoch, hide_order=view == "overall")


def _message_sha256(message: node_pb2.EncryptResponse) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def subjects_digest(pseudonyms: Sequence[str]) -> str:
    """SHA-256 over the pseudonyms in request order, one per line."""
    return hashlib.sha256("\n".join(pseudonyms).encode("ascii")).hexdigest()


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")
