"""The check's domain types: what a caller asks and what it gets back (no REST, no protobuf).

The REST edge (gateway/routes, gateway/models.py) translates its pydantic models to and from
these; the check service (exchange/service.py) takes and returns nothing else. `CheckRequest`
satisfies the decision point's `policies.types.CheckContext`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["he", "plaintext"]
View = Literal["per_criterion", "overall", "cohort"]
VIEWS: tuple[View, ...] = ("per_criterion", "overall", "cohort")


@dataclass(frozen=True)
class CheckRequest:
    """One eligibility check as asked: the program names the thresholds, never the request."""

    program: str
    purpose: str
    legal_basis: str
    case_id: str
    pseudonyms: tuple[str, ...]
    mode: Mode = "he"
    public_context: bytes = b""  # the requester's TenSEAL public context (HE mode)
    context_fingerprint: str = ""  # "sha256:<hex>" when the caller named a registered context
    consent_ref: str = ""
    approval_ref: str = ""
    requester_statement: str = ""  # the requesting user's signature over this check (xgate-check/1)


@dataclass(frozen=True)
class CriterionVerdict:
    """One criterion's answer: masked ciphertexts (HE) or the baseline's plain verdicts."""

    criterion: str
    description: str
    ciphertexts: tuple[bytes, ...] = ()  # one masked BFV ciphertext per chunk of SLOTS subjects
    passes: tuple[bool, ...] | None = None  # PLAINTEXT baseline only
    block: int | None = None  # packed HE result: slots [block*subjects, (block+1)*subjects) of CheckOutcome.packed


@dataclass(frozen=True)
class NodeReceipt:
    """A node's own audit entry for its answer, so either side can prove what happened."""

    node_audit_index: int
    node_audit_leaf_hash: str  # hex
    response_sha256: str  # hex, over the deterministic serialisation of the answer


@dataclass(frozen=True)
class CohortPrivacy:
    """The cohort view's noise, as the requester needs it to debias the counts (exchange/cohort.py)."""

    epsilon_per_criterion: float
    flip_probability: float
    epsilon_per_query: float
    period_spent: float | None = None  # the (agency, program) budget this period, this query included
    period_cap: float | None = None


@dataclass(frozen=True)
class CheckOutcome:
    request_id: str
    program: str
    program_version: str
    mode: Mode
    view: View
    subjects: int
    chunk_size: int
    shuffled: bool  # cohort view: slot order was permuted, slots map to no one
    criteria: tuple[CriterionVerdict, ...]
    policy_ids: tuple[str, ...] = ()
    policy_set_hash: str = ""
    nodes: Mapping[str, NodeReceipt] = field(default_factory=dict)
    node_bytes: int = 0  # protobuf bytes exchanged with the nodes for this check
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    privacy: CohortPrivacy | None = None  # cohort view only
    packed: tuple[bytes, ...] = ()  # small HE batches: every criterion's result in one ciphertext
