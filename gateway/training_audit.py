"""Training job events -> canonical audit records (pure).

Every record of a job carries `request_id` = the job id, its purpose and legal basis, and the
requesting analyst as actor, so `GET /v1/audit/entries?request_id=<job>` returns its whole trail
and `?kind=training_round_completed` one kind. Only what the runner's events already restrict
themselves to reaches the log: agencies, node ids, counts, metrics and SHA-256 digests. Floats
are written as their exact `repr` strings (the canonical form has no floats); anything the record
schema refuses (a key that suggests personal data, nested objects) is dropped and counted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from audit.records import MAX_TEXT, PERSONAL_KEYS, TRAINING_KINDS, Actor, AuditRecord
from federated.jobs import JobSpec
from xgate.errors import InvalidInput

# Runner event -> record kind. The runner's own `job_submitted` is not mapped: the gateway records
# the submission itself (with the caller's identity) before anything runs.
EVENT_KINDS = {
    "job_approved": "training_node_approved",
    "job_refused": "training_node_refused",
    "run_started": "training_run_started",
    "aligned": "training_aligned",
    "round_completed": "training_round_completed",
    "round_evaluated": "training_round_evaluated",
    "update_rejected": "training_update_rejected",
    "node_dropped": "training_node_dropped",
    "dp_spent": "training_dp_spent",
    "job_completed": "training_job_completed",
    "job_failed": "training_job_failed",
    "server_error": "training_job_failed",
}
SKIPPED_EVENTS = frozenset({"job_submitted"})
_RENAMED = {"subjects": "aligned_subjects"}  # a count here; `subjects` in a record means pseudonyms
_ENVELOPE = frozenset({"ts", "job_id", "event", "policy_ids", "policy_set_hash"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_LIST = 1000
KINDS = TRAINING_KINDS  # every kind this module writes (a unit test checks the mapping stays inside)


def _allowed_key(key: str) -> bool:
    """The record schema's key rule (audit/records.py), checked here so one bad field drops alone."""
    parts = set(key.split("_"))
    return bool(_KEY.match(key)) and key not in PERSONAL_KEYS and not parts & {"value", "values", "income"}


def actor_of(user: str, agency: str, role: str) -> Actor:
    return Actor(user=user, agency=agency, role=role)


def _scalar(value: Any) -> str | int | bool | None:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return repr(value)  # exact and canonical; the record schema has no floats
    return str(value)[:MAX_TEXT]


def _meta_value(value: Any) -> Any:
    if isinstance(value, list | tuple):
        items = [v if isinstance(v, int) and not isinstance(v, bool) else str(v)[:MAX_TEXT] for v in value]
        return tuple(items[:MAX_LIST])
    if isinstance(value, dict):
        raise TypeError("nested")
    return _scalar(value)


def job_fields(job: JobSpec, actor: Actor) -> dict[str, Any]:
    """What every record of the job carries."""
    return {
        "actor": actor,
        "request_id": job.job_id,
        "purpose": job.purpose,
        "legal_basis": job.legal_basis or None,
    }


def _build(fields: dict[str, Any], metadata: dict[str, Any]) -> AuditRecord:
    try:
        return AuditRecord(**fields, metadata=metadata)
    except Exception:  # noqa: BLE001  # see below: keep the entry, drop the free text
        # A value the schema refuses (e.g. a reason that looks like an identity number): keep the
        # entry, drop the free text rather than lose the event.
        redacted = {k: ("[redacted]" if isinstance(v, str) else v) for k, v in metadata.items()}
        try:
            return AuditRecord(**fields, metadata=redacted)
        except Exception as exc:
            raise InvalidInput("training event cannot be recorded") from exc


def record_for_event(event: Mapping[str, Any], job: JobSpec, actor: Actor) -> AuditRecord | None:
    """The audit record of one runner event (None for events the gateway records itself)."""
    name = str(event.get("event", ""))
    if name in SKIPPED_EVENTS:
        return None
    kind = EVENT_KINDS.get(name, "training_event")
    fields: dict[str, Any] = job_fields(job, actor) | {"kind": kind}
    when = _time(event.get("ts"))
    if when is not None:
        fields["time"] = when
    metadata: dict[str, Any] = {"event": name[:64]} if kind == "training_event" else {}
    digests: dict[str, str] = {}
    dropped = 0
    for key, value in event.items():
        if key in _ENVELOPE:
            continue
        if key.endswith("_sha256"):
            if isinstance(value, str) and _HEX64.match(value):
                digests[key[: -len("_sha256")]] = value
            else:
                dropped += 1
            continue
        name_out = _RENAMED.get(key, key)
        if not _allowed_key(name_out):
            dropped += 1
            continue
        try:
            metadata[name_out] = _meta_value(value)
        except TypeError:
            dropped += 1
    if name in ("job_approved", "job_refused"):
        fields["decision"] = "allow" if name == "job_approved" else "deny"
    ids = event.get("policy_ids")
    if isinstance(ids, list | tuple):
        fields["policy_ids"] = tuple(str(i)[:MAX_TEXT] for i in ids)
    set_hash = event.get("policy_set_hash")
    if isinstance(set_hash, str) and _HEX64.match(set_hash):
        fields["policy_set_hash"] = set_hash
    fields["digests"] = digests
    if dropped:
        metadata["dropped_fields"] = dropped
    return _build(fields, metadata)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def submitted_record(job: JobSpec, actor: Actor, http_request_id: str | None = None) -> AuditRecord:
    """The gateway accepted a valid job for decision (``http_request_id``: the REST request that
    submitted it, linking that request's `request` entry to the job id every job entry carries)."""
    metadata: dict[str, Any] = {
        "mode": job.mode.value,
        "rounds": job.rounds,
        "secagg": job.secagg,
        "min_nodes": job.min_nodes,
        "elements": tuple(job.elements()),
        "label_holder": job.label_holder,
        "dp_epsilon": repr(job.dp.epsilon) if job.dp is not None else None,
    }
    if job.approval_ref:
        metadata["approval_ref"] = job.approval_ref
    if http_request_id is not None:
        metadata["http_request_id"] = http_request_id
    fields = job_fields(job, actor) | {"kind": "training_job_submitted", "digests": {"job": job.digest()}}
    return _build(fields, metadata)


def decision_record(
    job: JobSpec,
    actor: Actor,
    *,
    allowed: bool,
    stage: str,
    reasons: tuple[str, ...],
    policy_ids: tuple[str, ...],
    policy_set_hash: str,
    datasets: tuple[str, ...],
    epsilon: float = 0.0,
) -> AuditRecord:
    """The gateway's decision on a job: `stage` is policy | approval | budget | capacity | node_admission | identity
    | signature."""
    metadata: dict[str, Any] = {
        "stage": stage,
        "datasets": datasets,
        "reason": "; ".join(reasons)[:MAX_TEXT],
        "epsilon": repr(float(epsilon)),
    }
    fields = job_fields(job, actor) | {
        "kind": "training_job_approved" if allowed else "training_job_refused",
        "decision": "allow" if allowed else "deny",
        "policy_ids": tuple(p[:MAX_TEXT] for p in policy_ids),
        "policy_set_hash": policy_set_hash if _HEX64.match(policy_set_hash or "") else None,
        "digests": {"job": job.digest()},
    }
    return _build(fields, metadata)
