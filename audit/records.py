"""Canonical, versioned audit event records (pure).

A record's canonical JSON (sorted keys, no whitespace, UTF-8, schema "xgate-audit/1") is the Merkle
leaf data, so the same event always hashes the same. Records carry metadata, pseudonyms and SHA-256
digests only: validation refuses field names that suggest personal data (national_id, value, income,
...), strings that hold a national id (anywhere, separators ignored: `C110101197302232165`) and
references (`*_ref`) that are not plain ASCII (a name in place of `apr_...`), so a careless caller
cannot write personal data into an append-only log it can never be deleted from.

Records read back from a log (`parse`, or with the STORED validation context) keep the checks they
were written under: an entry an older version accepted must stay readable and verifiable; the
subject report withholds such an entry's case id (audit/report.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
)

from xgate.errors import InvalidInput
from xgate.logging import FORBIDDEN_KEYS
from xgate.pseudonym import PSEUDONYM_RE, contains_national_id

SCHEMA = "xgate-audit/1"
KINDS = frozenset(
    {
        "request",
        "policy_decision",
        "fanout_call",
        "node_response",
        "result",
        "config_change",
        "admin_action",
        "audit_read",
        "consent_change",
        "checkpoint",
        "alert",
    }
)
# Federated training jobs (gateway/training_audit.py maps the runner's events onto these; request_id
# is the job id, so one filter returns a job's whole trail). Other `training_*` kinds stay accepted.
TRAINING_KINDS = frozenset(
    {
        "training_job_submitted",  # the gateway accepted a valid job for decision (job digest, purpose)
        "training_job_approved",  # the gateway's Cedar `train` decision + ε charge (policy ids, set hash)
        "training_job_refused",  # refused by the gateway's policy/budget, or later by a node (stage)
        "training_node_approved",  # a data-owning node admitted the job under its own policy/ledger
        "training_node_refused",
        "training_run_started",  # Flower run id, node ids
        "training_aligned",  # vertical: aligned subject count and digest of the aligned list
        "training_round_completed",  # participants, agencies, aggregate/gradients digest
        "training_round_evaluated",  # AUC, balanced accuracy, model digest
        "training_update_rejected",  # a node's update failed the range/shape/NaN checks
        "training_node_dropped",
        "training_dp_spent",  # ε, δ, noise multiplier
        "training_job_completed",  # final model digest
        "training_job_failed",
        "training_event",  # any other runner event (its name in metadata.event)
    }
)
_TRAINING_KIND = re.compile(r"^training_[a-z][a-z0-9_]{0,39}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Mainland resident id (18 chars) and mobile numbers, as whole tokens (uuids stay legal); a valid id
# inside a longer token or split by separators is found by xgate.pseudonym.contains_national_id.
_LOOKS_PERSONAL = re.compile(r"(?<![0-9A-Za-z])(\d{17}[\dXx]|1[3-9]\d{9})(?![0-9A-Za-z])")
# A reference (approval_ref, consent_ref, ...) is an opaque printable-ASCII token, never a name.
_REFERENCE = re.compile(r"^[\x21-\x7e]*$")
# Validation context for records read back from a log: the checks newer than the entry are skipped.
STORED: dict[str, bool] = {"stored": True}
# Who an entry is about is the audit record's purpose: its `subjects` (pseudonyms), `case_id` and
# `digests.subjects` are schema, though the log processor keeps these names out of operational logs.
_AUDIT_SCHEMA_KEYS = frozenset({"subject", "subjects", "pseudonym", "pseudonyms", "case_id"})
PERSONAL_KEYS = (FORBIDDEN_KEYS - _AUDIT_SCHEMA_KEYS) | {
    "name",
    "full_name",
    "address",
    "phone",
    "mobile",
    "email",
    "birth_date",
    "date_of_birth",
    "dob",
    "salary",
    "wage",
    "pension",
    "amount",
    "balance",
    "id_card",
    "passport",
    "ssn",
    "raw",
    "payload",
    "body",
    "plaintext_value",
}
MAX_TEXT = 256
# One encoder for every record (json.dumps with options builds a new encoder per call).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
MAX_ITEMS = 100_000

Scalar = str | int | bool | None
MetaValue = Scalar | tuple[str | int, ...]


def now_ms() -> datetime:
    """Current UTC time at the millisecond precision records keep."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _stored(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and info.context.get("stored") is True


# Identifiers the gateway and nodes generate: request ids (UUIDs) and digests or fingerprints
# (lowercase hex, maybe `sha256:`-prefixed). Their digits, read across the letters between them, hold
# a date and a check character by chance (5 UUIDs and 7 digests in 10,000): refusing them made one
# request in about 2,000 fail with 503 (third review's schemathesis run). They carry no text a person
# typed (the edge scans that, gateway/models.py), so the embedded-id scan skips them; a whole-token
# id is still refused.
_MACHINE_ID = re.compile(r"(sha256:)?[0-9a-f]{32,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check_text(field: str, text: str, stored: bool = False) -> str:
    if len(text) > MAX_TEXT:
        raise ValueError(f"{field} is longer than {MAX_TEXT} characters")
    scan = not stored and not _MACHINE_ID.fullmatch(text)
    if _LOOKS_PERSONAL.search(text) or (scan and contains_national_id(text)):
        raise ValueError(f"{field} looks like it carries an identity number; log pseudonyms or digests only")
    return text


def _check_key(field: str, key: str) -> None:
    if not _NAME.match(key):
        raise ValueError(f"{field} key must match [a-z][a-z0-9_]*")
    if key in PERSONAL_KEYS or any(part in {"value", "values", "income"} for part in key.split("_")):
        raise ValueError(f"{field} key '{key}' suggests personal data; log digests or pseudonyms instead")


def is_record_kind(kind: str) -> bool:
    """A kind a record may have: one of KINDS, or a federated training job's `training_*`."""
    return kind in KINDS or bool(_TRAINING_KIND.fullmatch(kind))


class Actor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str = Field(min_length=1, max_length=128)
    agency: str = Field(min_length=1, max_length=64)
    role: str = Field(min_length=1, max_length=64)

    @field_validator("user", "agency", "role")
    @classmethod
    def _text(cls, v: str, info: ValidationInfo) -> str:
        return _check_text("actor", v, _stored(info))


class AuditRecord(BaseModel):
    """One audit event. Construct directly or via ``from_event`` (flat dicts from other packages)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["xgate-audit/1"] = Field(default="xgate-audit/1", alias="schema")
    kind: str
    time: datetime = Field(default_factory=now_ms)
    actor: Actor
    request_id: str | None = Field(default=None, max_length=128)
    program: str | None = Field(default=None, max_length=128)
    purpose: str | None = Field(default=None, max_length=128)
    legal_basis: str | None = Field(default=None, max_length=256)
    case_id: str | None = Field(default=None, max_length=128)
    decision: Literal["allow", "deny"] | None = None
    policy_ids: tuple[str, ...] = ()
    policy_set_hash: str | None = None
    subjects: tuple[str, ...] = Field(default=(), max_length=MAX_ITEMS)
    digests: dict[str, str | tuple[str, ...]] = Field(default_factory=dict)
    metadata: dict[str, MetaValue] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if not is_record_kind(v):
            raise ValueError(f"unknown record kind '{v[:40]}'")
        return v

    @field_validator("time")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("time must be timezone-aware")
        return v.astimezone(UTC).replace(microsecond=v.microsecond // 1000 * 1000)

    @field_validator("request_id", "program", "purpose", "legal_basis", "case_id")
    @classmethod
    def _texts(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _check_text(info.field_name or "field", v, _stored(info))

    @field_validator("policy_ids")
    @classmethod
    def _policies(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for p in v:
            _check_text("policy id", p, _stored(info))
        return v

    @field_validator("policy_set_hash")
    @classmethod
    def _policy_hash(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256_HEX.match(v):
            raise ValueError("policy_set_hash must be lowercase sha256 hex")
        return v

    @field_validator("subjects")
    @classmethod
    def _pseudonyms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for s in v:
            if not PSEUDONYM_RE.match(s):
                raise ValueError("subjects must be pseudonyms (26 base32 characters), never raw identifiers")
        return v

    @field_validator("digests")
    @classmethod
    def _digests(cls, v: dict[str, str | tuple[str, ...]]) -> dict[str, str | tuple[str, ...]]:
        for key, d in v.items():
            _check_key("digest", key)
            for item in (d,) if isinstance(d, str) else d:
                if not _SHA256_HEX.match(item):
                    raise ValueError(f"digest '{key}' must be lowercase sha256 hex")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, MetaValue], info: ValidationInfo) -> dict[str, MetaValue]:
        if len(v) > 64:
            raise ValueError("metadata has more than 64 keys")
        stored = _stored(info)
        for key, item in v.items():
            _check_key("metadata", key)
            for x in item if isinstance(item, tuple) else (item,):
                if isinstance(x, str):
                    _check_text(f"metadata '{key}'", x, stored)
                    if key.endswith("_ref") and not stored and not _REFERENCE.match(x):
                        raise ValueError(f"metadata '{key}' must be a printable-ASCII reference, never a name")
        return v

    @field_serializer("time")
    def _time_out(self, v: datetime) -> str:
        return (
            f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond // 1000:03d}Z"
        )

    # -- canonical form ----------------------------------------------------------------------

    def canonical(self) -> bytes:
        """The leaf data: sorted keys, no whitespace, UTF-8, absent optionals omitted.

        Hand-built (equal to ``model_dump(mode="json", by_alias=True, exclude_none=True)``, which a
        test checks) because this runs once per append and pydantic's dump is 5x slower.
        """
        a = self.actor
        body: dict[str, Any] = {
            "schema": self.schema_,
            "kind": self.kind,
            "time": self._time_out(self.time),
            "actor": {"agency": a.agency, "role": a.role, "user": a.user},
            # json encodes tuples as arrays, so the validated containers go in as they are
            "policy_ids": self.policy_ids,
            "subjects": self.subjects,
            "digests": self.digests,
            "metadata": self.metadata,
        }
        for key in ("request_id", "program", "purpose", "legal_basis", "case_id", "decision", "policy_set_hash"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return _CANONICAL_JSON.encode(body).encode("utf-8")

    @property
    def time_ms(self) -> int:
        return int(self.time.timestamp() * 1000)

    @classmethod
    def parse(cls, data: bytes) -> AuditRecord:
        """Parse leaf data; refuses anything that is not exactly canonical."""
        try:
            record = cls.model_validate_json(data, context=STORED)
        except ValidationError as exc:
            raise InvalidInput("audit record does not validate", problems=_problems(exc)) from exc
        if record.canonical() != data:
            raise InvalidInput("audit record is not in canonical form")
        return record

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> AuditRecord:
        """Build a record from a flat event dict, as other packages' audit hooks emit.

        Known fields map directly; ``actor_user/actor_agency/actor_role`` form the actor; keys
        ending in ``_sha256`` become digests; everything else goes into metadata (validated).
        """
        fields: dict[str, Any] = {}
        digests: dict[str, Any] = dict(event.get("digests", {}))
        metadata: dict[str, Any] = dict(event.get("metadata", {}))
        actor = dict(event.get("actor", {}))
        for key, val in event.items():
            if key in {"digests", "metadata", "actor"}:
                continue
            if key.startswith("actor_"):
                actor[key[6:]] = val
            elif key in cls.model_fields or key == "schema":
                fields[key] = val
            elif key.endswith("_sha256"):
                digests[key[:-7]] = val if isinstance(val, str) else tuple(val)
            else:
                metadata[key] = tuple(val) if isinstance(val, list | tuple) else val
        actor.setdefault("role", "service")
        try:
            return cls.model_validate({**fields, "actor": actor, "digests": digests, "metadata": metadata})
        except ValidationError as exc:
            raise InvalidInput("audit event does not validate", problems=_problems(exc)) from exc


def _problems(exc: ValidationError) -> list[str]:
    # Error text only, never the offending input (it may be personal data).
    return [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)][:10]


def coerce(record: AuditRecord | Mapping[str, Any]) -> AuditRecord:
    return record if isinstance(record, AuditRecord) else AuditRecord.from_event(record)


def sha256_hex(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
