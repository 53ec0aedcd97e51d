"""Requester-signed checks: the requesting user's own signature over the question and its HE context.

Nodes authenticate the gateway, not the requester. Without this statement they take the
requester's identity and HE context on the gateway's word, so a gateway that names a context of
its own (keys it made) under a real caseworker decrypts every value it is sent (THREAT_MODEL I1b).
Each check therefore carries a statement the requesting user signs with an Ed25519 key registered
for that user and agency in the CA-signed policy set (`requesters.toml`, policies/requesters.py).
The gateway checks it before its policy decision and forwards it; every node checks it again
before it reads anything, against the request it is actually asked to answer:

* the user, agency, program, purpose, legal basis, case id, consent and approval references are
  the request's;
* `context_fingerprint` is the fingerprint of the very HE context the node will encrypt under
  (the empty string for the plaintext benchmark mode);
* `subjects_sha256` is the digest of the sorted pseudonyms the node is asked about (sorted: the
  cohort view sends each criterion's subjects in its own secret order), and `subjects` their count;
* `issued_at` lies within `MAX_AGE_S` before the verifier's clock (and at most `MAX_SKEW_S`
  after it).

Format `xgate-check/1` (crypto/artefacts.py): the signature covers the format name and the
body's canonical JSON. Replaying a statement within its window gains a gateway nothing: the
answers are encrypted under the requester's context, whose secret key only the requester holds.

Pure: no I/O; the registry of keys reaches `verify_statement` as a mapping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from crypto.artefacts import Signer, sign_artefact, verify_artefact
from crypto.envelope import SigningKey
from protos.xgate.v1 import node_pb2
from xgate.errors import CryptoError, PolicyDenied

CHECK_FORMAT = "xgate-check/1"
MAX_AGE_S = 15 * 60.0  # a check waits in admission and is retried on replicas within this
MAX_SKEW_S = 5 * 60.0  # a requester's clock ahead of a node's
MAX_STATEMENT_BYTES = 4 * 1024


@dataclass(frozen=True)
class RequesterKey:
    """A requesting user's registered signing key: the user and the agency it signs for."""

    signer: Signer
    user: str
    agency: str


class CheckStatement(BaseModel):
    """What a requester signs: the question, the HE context the answer may be encrypted under, the subjects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(min_length=1, max_length=128)
    agency: str = Field(min_length=1, max_length=64)
    program: str = Field(min_length=1, max_length=64)
    purpose: str = Field(min_length=1, max_length=64)
    legal_basis: str = Field(min_length=1, max_length=128)
    case_id: str = Field(min_length=1, max_length=128)
    consent_ref: str = Field(default="", max_length=128)
    approval_ref: str = Field(default="", max_length=128)
    context_fingerprint: str = Field(default="", pattern=r"^(sha256:[0-9a-f]{64})?$")
    subjects: int = Field(ge=1)
    subjects_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    issued_at: AwareDatetime


@dataclass(frozen=True)
class Question:
    """The check a verifier is asked to answer, as it stands in the request it holds."""

    user: str
    agency: str
    program: str
    purpose: str
    legal_basis: str
    case_id: str
    consent_ref: str
    approval_ref: str
    context_fingerprint: str
    pseudonyms: Sequence[str]

    @classmethod
    def of(cls, user: str, agency: str, check: Mapping[str, Any], context_fingerprint: str) -> Question:
        """`user` of `agency` asks the check whose fields (program, purpose, legal_basis, case_id,
        pseudonyms; consent_ref and approval_ref, empty when absent) `check` holds: a REST body, or
        the attributes of a request (`vars`), under the context `context_fingerprint` names."""
        return cls(
            user=user,
            agency=agency,
            program=str(check["program"]),
            purpose=str(check["purpose"]),
            legal_basis=str(check["legal_basis"]),
            case_id=str(check["case_id"]),
            consent_ref=str(check.get("consent_ref") or ""),
            approval_ref=str(check.get("approval_ref") or ""),
            context_fingerprint=context_fingerprint,
            pseudonyms=list(check["pseudonyms"]),
        )

    @classmethod
    def of_request(cls, request: node_pb2.EncryptRequest, context_fingerprint: str) -> Question:
        """The check a node is asked to answer, under the context `context_fingerprint` names."""
        ctx = request.context
        return cls(
            user=ctx.requester_user,
            agency=ctx.requester_agency,
            program=ctx.program_id,
            purpose=ctx.purpose,
            legal_basis=ctx.legal_basis,
            case_id=ctx.case_id,
            consent_ref=ctx.consent_ref,
            approval_ref=ctx.approval_ref,
            context_fingerprint=context_fingerprint,
            pseudonyms=list(request.pseudonyms),
        )


def subjects_digest(pseudonyms: Sequence[str]) -> str:
    """SHA-256 of the sorted pseudonyms, one per line: the same for any order of the same subjects."""
    return hashlib.sha256("\n".join(sorted(pseudonyms)).encode()).hexdigest()


def sign_check(key: SigningKey, question: Question, issued_at: datetime) -> str:
    """The requester's statement for `question` (the client side)."""
    body = CheckStatement(
        **{name: getattr(question, name) for name in _SAME},
        context_fingerprint=question.context_fingerprint,
        subjects=len(question.pseudonyms),
        subjects_sha256=subjects_digest(question.pseudonyms),
        issued_at=issued_at,
    )
    return sign_artefact(body.model_dump(mode="json"), key, fmt=CHECK_FORMAT)


# Fields compared one to one, in the order a refusal names the first that differs.
_SAME = ("user", "agency", "program", "purpose", "legal_basis", "case_id", "consent_ref", "approval_ref")


def verify_statement(
    text: str, requesters: Mapping[str, RequesterKey], question: Question, now: datetime
) -> RequesterKey:
    """The registered key that signed `text` for exactly this question, now; PolicyDenied naming
    what fails (never the signed values themselves: they are the requester's, but a refusal is
    logged)."""
    if not text:
        raise PolicyDenied(
            "check refused: it carries no requester statement (the requesting user signs each check"
            " with a key registered in the policy set's requesters.toml)"
        )
    if not requesters:
        raise PolicyDenied("check refused: no requester signing key is registered (requesters.toml)")
    try:
        signer, raw = verify_artefact(
            text, {k: r.signer for k, r in requesters.items()}, fmt=CHECK_FORMAT, max_bytes=MAX_STATEMENT_BYTES
        )
    except CryptoError as exc:
        hint = " (a key the policy set's requesters.toml registers)" if "registered signer" in exc.message else ""
        raise PolicyDenied(f"requester statement refused: {exc.message}{hint}") from None
    key = requesters[signer.key_id]
    try:
        body = CheckStatement.model_validate(raw)
    except ValidationError as exc:
        where = ".".join(str(x) for x in exc.errors()[0]["loc"]) or "body"
        raise PolicyDenied(f"requester statement refused: field '{where}' is malformed") from None
    if (key.user, key.agency) != (body.user, body.agency):
        raise PolicyDenied("requester statement refused: signed with a key registered for another user or agency")
    for name in _SAME:
        if getattr(body, name) != getattr(question, name):
            raise PolicyDenied(f"requester statement refused: it was signed for another {name.replace('_', ' ')}")
    if body.context_fingerprint != question.context_fingerprint:
        raise PolicyDenied("requester statement refused: the HE context named is not the one the requester signed")
    if body.subjects != len(question.pseudonyms) or body.subjects_sha256 != subjects_digest(question.pseudonyms):
        raise PolicyDenied("requester statement refused: the subjects are not the ones the requester signed")
    age = now - body.issued_at
    if age > timedelta(seconds=MAX_AGE_S):
        raise PolicyDenied(
            f"requester statement refused: issued more than {MAX_AGE_S / 60:g} minutes ago"
            " (sign the check afresh; or the requester's clock is behind)"
        )
    if age < -timedelta(seconds=MAX_SKEW_S):
        raise PolicyDenied("requester statement refused: issued in the future (check the requester's clock)")
    return key
