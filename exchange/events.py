"""The audit events of one check, built without I/O: what the gateway and each node append.

Every builder returns the dict the audit log stores (audit/records.py validates kinds and
fields); `None` values are dropped, so an absent optional field is absent, not null. The
gateway's events of one check, in order:

    policy_decision (allow | deny)  - the subjects, purpose, legal basis, the policies that decided
    fanout_call                     - only when a node failed: which agency, which error code
    node_response (one per node)    - the node's own audit index and entry hash, the answer's digest
    result                          - digests of the subjects, the program, the result, the context

A node appends its own `node_response` (`node_served`) before it answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from audit.records import MAX_TEXT
from exchange.eligibility import CriterionOutcome
from exchange.types import CheckRequest, NodeReceipt
from policies.programs import Program
from policies.types import PolicyOutcome
from protos.xgate.v1 import node_pb2
from xgate.errors import NodeError, PolicyDenied
from xgate.principal import Principal

Event = dict[str, Any]


def _clean(event: Mapping[str, Any]) -> Event:
    return {k: v for k, v in event.items() if v is not None}


def actor(principal: Principal) -> Event:
    return {"actor_user": principal.user, "actor_agency": principal.agency, "actor_role": principal.role}


def about_check(request_id: str, program: Program, request: CheckRequest, principal: Principal) -> Event:
    """The fields every gateway event of one check shares (the decision entry lists the subjects)."""
    return {
        "request_id": request_id,
        "program": program.id,
        "purpose": request.purpose,
        "legal_basis": request.legal_basis,
        "case_id": request.case_id,
        "approval_ref": request.approval_ref or None,
        "consent_ref": request.consent_ref or None,
        "subjects": list(request.pseudonyms),
        **actor(principal),
        **_statement_digest(request.requester_statement),
    }


def _statement_digest(statement: str) -> Event:
    """Which signed statement asked (policies/check_statements.py): the gateway's entries and every
    node's name the same digest. Nothing for an unsigned request (refused, or a core test's)."""
    return {"requester_statement_sha256": hashlib.sha256(statement.encode()).hexdigest()} if statement else {}


def policy_allowed(about: Mapping[str, Any], outcome: PolicyOutcome) -> Event:
    return _clean(
        {
            **about,
            "kind": "policy_decision",
            "decision": "allow",
            "policy_ids": list(outcome.policy_ids),
            "policy_set_hash": outcome.policy_set_hash or None,
            "view": outcome.view,
        }
    )


def _fit(reason: object) -> str:
    """A reason within the audit log's bound on one text value, cut if longer, so that recording a
    refusal never fails (the requester got the whole message)."""
    text = str(reason)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def policy_denied(about: Mapping[str, Any], exc: PolicyDenied) -> Event:
    reasons = exc.details.get("reasons") or [exc.message]
    return _clean(
        {
            **about,
            "kind": "policy_decision",
            "decision": "deny",
            "reason": exc.code,
            "reasons": tuple(_fit(r) for r in reasons),
            "policy_set_hash": str(exc.details.get("policy_set_hash", "")) or None,
        }
    )


def fanout_failed(about: Mapping[str, Any], exc: NodeError) -> Event:
    return _clean({**about, "kind": "fanout_call", "node": exc.agency, "error": exc.code})


def node_answered(
    principal: Principal,
    request_id: str,
    program: Program,
    agency: str,
    receipt: NodeReceipt,
    criterion: str | None = None,
) -> Event:
    """The gateway's record of one node's answer, bound to the node's own log entry (the cohort
    view asks a node once per criterion: `criterion` says which answer this is)."""
    return _clean(
        {
            **actor(principal),
            "kind": "node_response",
            "request_id": request_id,
            "program": program.id,
            "node": agency,
            "criterion": criterion,
            "node_audit_index": receipt.node_audit_index,
            "node_entry_sha256": receipt.node_audit_leaf_hash or None,
            "response_sha256": receipt.response_sha256,
        }
    )


def check_result(
    about: Mapping[str, Any],
    request: CheckRequest,
    program: Program,
    *,
    result_sha256: str,
    context_sha256: str | None,
    view: str,
    nodes: Iterable[str],
    epsilon: float | None = None,
    pads: tuple[bytes, int, Mapping[str, bytes]] | None = None,
) -> Event:
    """The result binds to the decision entry's subject list by digest (not a second full list).

    `epsilon`: the cohort view's privacy spend for this query (a number, no personal data).
    `pads`: a padded check's (batch id, window offset, element -> pad ciphertext): which batch and
    which pads the result was computed with, so a result spoilt by a bad pad traces to the node's
    signed answer that opened the batch (the node's own entry records the same digests)."""
    padded = (
        {
            "pad_batch": pads[0].hex(),
            "pad_offset": pads[1],
            "pads_sha256": tuple(hashlib.sha256(pads[2][e]).hexdigest() for e in sorted(pads[2])),
        }
        if pads is not None
        else {}
    )
    return _clean(
        {
            **{k: v for k, v in about.items() if k != "subjects"},
            "subjects_sha256": subjects_digest(request.pseudonyms),
            "subject_count": len(request.pseudonyms),
            "kind": "result",
            "program_version": program.version,
            "program_sha256": program.sha256,
            "result_sha256": result_sha256,
            "context_sha256": context_sha256,
            "view": view,
            "mode": request.mode,
            "nodes": tuple(sorted(nodes)),
            # audit metadata holds no floats: the decimal text, e.g. "3" or "0.15"
            "epsilon": f"{epsilon:g}" if epsilon is not None else None,
            **padded,
        }
    )


def node_served(request: node_pb2.EncryptRequest, response: node_pb2.EncryptResponse) -> Event:
    """A node's own entry for an answer it is about to send (nodes/service.py)."""
    ctx = request.context
    event: Event = {
        "kind": "node_response",
        "request_id": ctx.request_id,
        "actor_agency": ctx.requester_agency,
        "actor_user": ctx.requester_user,
        "actor_role": ctx.requester_role,
        "program": ctx.program_id,
        "purpose": ctx.purpose,
        "legal_basis": ctx.legal_basis,
        "case_id": ctx.case_id,
        "subjects": list(request.pseudonyms),
        "elements": [q.element for q in request.elements],
        # The context the answer is encrypted under: its bytes' digest, which its fingerprint names
        # when only the fingerprint came (the node encrypted under the context it holds for it).
        "context_sha256": (
            request.context_fingerprint.removeprefix("sha256:")
            if request.mode == node_pb2.EXCHANGE_MODE_HE and request.context_fingerprint and not request.public_context
            else hashlib.sha256(request.public_context).hexdigest()
        ),
        **_statement_digest(request.context.requester_statement),
        "response_sha256": [d.hex() for e in response.elements for d in e.ciphertext_sha256],
    }
    if request.pad_batch:
        # Which slots of which one-time pad batch the answer used (a node answers each slot once),
        # the pad ciphertexts it opened the batch with, and a digest of the padded values.
        event.update(pad_batch=request.pad_batch.hex(), pad_offset=request.pad_offset, pad_open=request.pad_open)
        event["response_sha256"] = [e.pad_ciphertext_sha256.hex() for e in response.elements if e.pad_ciphertext]
        event["padded_sha256"] = [
            hashlib.sha256(b"".join(v.to_bytes(8, "little", signed=True) for v in e.padded_values)).hexdigest()
            for e in response.elements
        ]
    return event


def receipt_of(response: node_pb2.EncryptResponse) -> NodeReceipt:
    return NodeReceipt(
        node_audit_index=response.node_audit_index,
        node_audit_leaf_hash=response.node_audit_leaf_hash.hex(),
        response_sha256=message_sha256(response),
    )


def message_sha256(message: node_pb2.EncryptResponse) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def subjects_digest(pseudonyms: Sequence[str]) -> str:
    """SHA-256 over the pseudonyms in request order, one per line."""
    return hashlib.sha256("\n".join(pseudonyms).encode("ascii")).hexdigest()


def digest_outcomes(outcomes: Iterable[CriterionOutcome], packed: bytes = b"") -> str:
    """SHA-256 over what the requester gets: per criterion its name and ciphertext digests (or
    verdicts), and a packed batch's one shared ciphertext (with each criterion's block)."""
    h = hashlib.sha256()
    for outcome in outcomes:
        h.update(outcome.criterion.encode())
        for blob in outcome.ciphertexts:
            h.update(hashlib.sha256(blob).digest())
        h.update(bytes(outcome.passes))
        if outcome.block is not None:
            h.update(b"block:%d" % outcome.block)
    if packed:
        h.update(b"packed:" + hashlib.sha256(packed).digest())
    return h.hexdigest()
