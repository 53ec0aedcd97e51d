"""REST request/response models: the validation edge for everything a caller sends."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from xgate.pseudonym import PSEUDONYM_RE

Mode = Literal["he", "plaintext"]


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    program: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    purpose: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    legal_basis: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-/]+$")
    case_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-/]+$")
    consent_ref: str = Field(default="", max_length=128)
    approval_ref: str = Field(default="", max_length=128)
    mode: Mode = "he"
    pseudonyms: list[str] = Field(min_length=1)
    public_context: str = Field(default="", description="base64 TenSEAL public context (HE mode)")

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
        try:
            return base64.b64decode(self.public_context, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("public_context is not valid base64") from None


class CriterionResult(BaseModel):
    criterion: str
    description: str
    ciphertexts: list[str] = Field(default_factory=list, description="base64 masked BFV ciphertexts, one per chunk")
    passes: list[bool] | None = Field(default=None, description="plaintext baseline only")


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
    policy: dict[str, object] = Field(default_factory=dict)
    nodes: dict[str, dict[str, object]] = Field(default_factory=dict)
    node_bytes: int = Field(default=0, description="protobuf bytes exchanged with nodes for this check")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class ProgramView(BaseModel):
    id: str
    version: str
    title: str
    purposes: list[str]
    requester_agencies: list[str]
    criteria: list[dict[str, object]]
    sha256: str
