"""REST request/response models: the validation edge for everything a caller sends.

`to_domain` / `from_domain` translate the check's REST models to and from the domain types the
check service takes and returns (exchange/types.py); nothing below the REST edge sees pydantic.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from crypto.he import MAX_CONTEXT_BYTES
from exchange import types as domain
from policies.approvals import REF_RE as APPROVAL_REF_RE
from policies.check_statements import MAX_STATEMENT_BYTES
from policies.consent import REF_RE as CONSENT_REF_RE
from xgate.errors import InvalidInput
from xgate.pseudonym import PSEUDONYM_RE, contains_national_id

Mode = Literal["he", "plaintext"]
MAX_CONTEXT_B64 = 4 * (-(-MAX_CONTEXT_BYTES // 3))


def _decode_context(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public_context is not valid base64") from None


class ContextRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Bounded by the gateway's body limit; above MAX_CONTEXT_BYTES decoded, a 413 (gateway/contexts.py).
    public_context: str = Field(min_length=1, description="base64 TenSEAL BFV public context (no secret key)")

    def context_bytes(self) -> bytes:
        try:
            return _decode_context(self.public_context)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None


class ContextRegistered(BaseModel):
    fingerprint: str = Field(description="sha256:<hex> of the context's bytes: what checks name")
    expires_at: float = Field(description="Unix time after which the registration lapses (register again)")
    bytes: int | None = Field(default=None, description="size of the registered context (POST only)")


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    program: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    purpose: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    legal_basis: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-/]+$")
    case_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-/]+$")
    consent_ref: str = Field(default="", max_length=128, description="a registered consent's reference (cns_...)")
    approval_ref: str = Field(default="", max_length=128, description="a registered approval's reference (apr_...)")
    mode: Mode = "he"
    pseudonyms: list[str] = Field(min_length=1)
    context_fingerprint: str = Field(
        default="",
        pattern=r"^(sha256:[0-9a-f]{64})?$",
        description="HE mode: the fingerprint POST /v1/contexts returned for the requester's public context",
    )
    public_context: str = Field(
        default="",
        max_length=MAX_CONTEXT_B64,
        description="deprecated: the base64 public context inline (~0.66 MB per check); use context_fingerprint",
    )
    requester_statement: str = Field(
        default="",
        max_length=MAX_STATEMENT_BYTES,
        description="the requesting user's signature over this check (xgate-check/1, policies/check_statements.py):"
        " its question, HE context fingerprint and subjects; the gateway and every node verify it",
    )

    @field_validator("consent_ref", "approval_ref")
    @classmethod
    def _reference(cls, value: str, info: ValidationInfo) -> str:
        # Opaque references, never a name or an id: the gateway and every node keep them in their logs.
        pattern, prefix = (APPROVAL_REF_RE, "apr_") if info.field_name == "approval_ref" else (CONSENT_REF_RE, "cns_")
        if value and not pattern.match(value):
            raise ValueError(f"{info.field_name} must be empty or a registered reference ({prefix} and 22 characters)")
        return value

    @field_validator("program", "purpose", "legal_basis", "case_id", "consent_ref", "approval_ref")
    @classmethod
    def _no_national_id(cls, value: str, info: ValidationInfo) -> str:
        # Every caller text lands in the append-only audit logs and in other people's access reports.
        if contains_national_id(value):
            raise ValueError(
                f"{info.field_name} holds what looks like a resident identity number; "
                "use a reference that carries no personal data"
            )
        return value

    @field_validator("pseudonyms")
    @classmethod
    def _pseudonyms(cls, value: list[str]) -> list[str]:
        for i, p in enumerate(value):
            if not PSEUDONYM_RE.match(p):
                raise ValueError(f"pseudonyms[{i}] is not a 26-character base32 pseudonym")
        if len(set(value)) != len(value):
            raise ValueError("pseudonyms must be unique")
        return value

    def context_bytes(self) -> bytes:
        return _decode_context(self.public_context)


class CriterionResult(BaseModel):
    criterion: str
    description: str
    ciphertexts: list[str] = Field(default_factory=list, description="base64 masked BFV ciphertexts, one per chunk")
    passes: list[bool] | None = Field(default=None, description="plaintext baseline only")
    block: int | None = Field(
        default=None,
        description="small HE batches: this criterion's values are slots [block*subjects, (block+1)*subjects) "
        "of packed_ciphertexts[0] (ciphertexts is then empty); with one-time pads the blocks may start past 0, "
        "and the ciphertext holds (largest block + 1) * subjects slots",
    )


class CheckResponse(BaseModel):
    request_id: str
    program: str
    program_version: str
    mode: Mode
    view: Literal["per_criterion", "overall", "cohort"]
    subjects: int
    chunk_size: int
    shuffled: bool = Field(
        description="true when slot order was permuted (cohort view): slots no longer map to subjects"
    )
    criteria: list[CriterionResult]
    packed_ciphertexts: list[str] = Field(
        default_factory=list,
        description="small HE batches: one base64 masked BFV ciphertext holding every criterion, one slot block each",
    )
    policy: dict[str, object] = Field(default_factory=dict)
    nodes: dict[str, dict[str, object]] = Field(default_factory=dict)
    node_bytes: int = Field(default=0, description="protobuf bytes exchanged with nodes for this check")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    privacy: dict[str, float | None] | None = Field(
        default=None,
        description="cohort view: the randomized response applied to every slot (epsilon_per_criterion,"
        " flip_probability, epsilon_per_query) and the (agency, program) budget this period (period_spent, period_cap)",
    )


def to_domain(body: CheckRequest, registered: bytes = b"") -> domain.CheckRequest:
    """The REST body as the check service's request. `registered`: the bytes the gateway holds for
    body.context_fingerprint; otherwise the inline public_context is decoded (a bad one is a 400)."""
    if body.context_fingerprint and body.public_context:
        raise InvalidInput("give context_fingerprint or public_context, not both")
    try:
        context = registered if body.context_fingerprint else body.context_bytes()
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return domain.CheckRequest(
        program=body.program,
        purpose=body.purpose,
        legal_basis=body.legal_basis,
        case_id=body.case_id,
        pseudonyms=tuple(body.pseudonyms),
        mode=body.mode,
        public_context=context if body.mode == "he" else b"",
        context_fingerprint=body.context_fingerprint if body.mode == "he" else "",
        consent_ref=body.consent_ref,
        approval_ref=body.approval_ref,
        requester_statement=body.requester_statement,
    )


def from_domain(outcome: domain.CheckOutcome) -> CheckResponse:
    """The check service's outcome as the REST answer (ciphertexts in base64)."""
    return CheckResponse(
        request_id=outcome.request_id,
        program=outcome.program,
        program_version=outcome.program_version,
        mode=outcome.mode,
        view=outcome.view,
        subjects=outcome.subjects,
        chunk_size=outcome.chunk_size,
        shuffled=outcome.shuffled,
        criteria=[
            CriterionResult(
                criterion=c.criterion,
                description=c.description,
                ciphertexts=[base64.b64encode(b).decode("ascii") for b in c.ciphertexts],
                passes=list(c.passes) if c.passes is not None else None,
                block=c.block,
            )
            for c in outcome.criteria
        ],
        packed_ciphertexts=[base64.b64encode(b).decode("ascii") for b in outcome.packed],
        policy={"policy_ids": list(outcome.policy_ids), "policy_set_hash": outcome.policy_set_hash},
        node_bytes=outcome.node_bytes,
        nodes={
            agency: {
                "node_audit_index": r.node_audit_index,
                "node_audit_leaf_hash": r.node_audit_leaf_hash,
                "response_sha256": r.response_sha256,
            }
            for agency, r in outcome.nodes.items()
        },
        timings_ms=dict(outcome.timings_ms),
        privacy=dataclasses.asdict(outcome.privacy) if outcome.privacy is not None else None,
    )


class ProgramView(BaseModel):
    id: str
    version: str
    title: str
    purposes: list[str]
    requester_agencies: list[str]
    criteria: list[dict[str, object]]
    sha256: str
