"""The audit log for security officers and the console: entries, checkpoints, proofs, alerts, verification.

Thin: every read goes through audit/read.py (``mode=strict``, the default, fails a read that
meets an altered entry with 409; ``mode=tolerant`` shows every stored row marked intact or
altered, as the console does). Every read of the log is itself appended (kind "audit_read")
before the answer leaves, so who looked at what is as tamper-evident as the events themselves;
if that append fails, the read fails.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from audit.checkpoints import ALG_ED25519, key_id, raw_public
from audit.query import Filters
from audit.read import COUNT_CAP, Mode, checkpoint_view
from audit.store import MAX_PAGE
from gateway.deps import AuditLogDep, Auditor, Reader, ServicesDep
from xgate.errors import AuditUnconfigured, ConfigError

router = APIRouter(prefix="/v1/audit", tags=["audit"])
Offset = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
ModeQuery = Annotated[Mode, Query(description="strict: fail on an altered entry (409); tolerant: mark it")]


def aware(value: datetime | None) -> datetime | None:
    """A time given without a zone is UTC (as it always was here)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


async def entry_filters(
    agency: str | None = None,
    user: str | None = None,
    program: str | None = None,
    purpose: str | None = None,
    decision: Annotated[Literal["allow", "deny"] | None, Query()] = None,
    subject: Annotated[str | None, Query(description="a subject pseudonym (26 base32 characters)")] = None,
    kind: str | None = None,
    request_id: str | None = None,
    status: Annotated[int | None, Query(ge=100, le=599, description="`request` entries answered so")] = None,
    refused: Annotated[bool, Query(description="`request` entries answered with a refusal (4xx)")] = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Filters:
    """The officer's filters from the query string (validated by audit.query.Filters)."""
    return Filters(subject=subject, user=user, agency=agency, program=program, purpose=purpose, kind=kind,
                   decision=decision, request_id=request_id, status=status, refused=refused, since=aware(since),
                   until=aware(until))  # fmt: skip


EntryFilters = Annotated[Filters, Depends(entry_filters)]


@router.get("/entries")
def list_entries(
    who: Auditor,
    reader: Reader,
    filters: EntryFilters,
    q: Annotated[str | None, Query(max_length=128, description="text the stored record contains")] = None,
    order: Literal["asc", "desc"] = "asc",
    mode: ModeQuery = "strict",
    offset: Offset = 0,
    limit: Limit = 100,
) -> dict[str, Any]:
    page = reader.page(filters, text=q or None, offset=offset, limit=limit, newest_first=order == "desc", mode=mode)
    meta = {f"filter_{k}": v for k, v in filters.active().items() if k != "subject"}
    subjects = (filters.subject,) if filters.subject else ()
    n = len(page.entries)
    reader.record_read(who, "entries", subjects=subjects, offset=offset, returned=n, filter_q=q or None, **meta)
    cp = reader.log.latest_checkpoint()
    return {
        "tree_size": page.tree_size,
        "checkpoint_size": cp.checkpoint.size if cp else 0,
        "total": page.total,
        "total_capped": page.total >= COUNT_CAP,
        "offset": offset,
        "limit": limit,
        "next_offset": offset + n if n == limit else None,
        "entries": [e.view() for e in page.entries],
    }


@router.get("/entries/{index}")
def get_entry(index: int, who: Auditor, reader: Reader, mode: ModeQuery = "strict") -> dict[str, Any]:
    detail = reader.entry(index, mode=mode)
    reader.record_read(who, "entry", index=index, verdict=detail["server_verdict"]["status"])
    return detail


@router.get("/checkpoints")
def list_checkpoints(
    who: Auditor, reader: Reader, services: ServicesDep, offset: Offset = 0, limit: Limit = 20
) -> dict[str, Any]:
    items, total = reader.checkpoints(offset=offset, limit=limit)
    reader.record_read(who, "checkpoints", offset=offset, returned=len(items))
    broken = services.audit.compromised if services.audit is not None else None
    state: dict[str, Any] = {"compromised": broken is not None}
    if broken is not None:  # the gateway found its log damaged and stopped signing (audit/integrity.py)
        state |= {"reason": str(broken.details.get("reason", "")), "message": broken.message}
    return {
        "tree_size": reader.log.size,
        "total": total,
        "offset": offset,
        "checkpoints": items,
        "log_state": state,
        "log_key_configured": services.public_key is not None,
        "witnesses_configured": sorted(reader.witnesses),
    }


@router.post("/checkpoints")
def publish_checkpoint(who: Auditor, reader: Reader, services: ServicesDep) -> dict[str, Any]:
    cp = reader.log.publish_checkpoint()
    if services.audit is not None and services.audit.registry is not None:
        services.audit.registry.record_checkpoint(reader.log.origin, cp.checkpoint.size, cp.text())
    reader.record_read(who, "publish_checkpoint", kind="admin_action", size=cp.checkpoint.size)
    return checkpoint_view(cp)


@router.get("/federation")
def federation_manifest(who: Auditor, reader: Reader, services: ServicesDep) -> dict[str, Any]:
    """The federation manifest (`xgate-audit-federation/1`): every gateway replica's log, its key and
    latest checkpoint, for `xgate audit verify-federation`. Compare the keys with the ones your
    federation published: the manifest lives in the replicas' database and proves nothing alone."""
    if services.audit is None or services.audit.registry is None:
        raise AuditUnconfigured("this gateway has no audit log configured (gateway.audit_db)")
    manifest = services.audit.registry.manifest()
    reader.record_read(who, "federation", returned=len(manifest["logs"]))
    return manifest | {"this_log": reader.log.origin}


@router.post("/checkpoints/cosign")
async def cosign_now(who: Auditor, services: ServicesDep) -> dict[str, Any]:
    """Publish a checkpoint now and collect the nodes' cosignatures."""
    audit, coordinator = services.audit, services.coordinator
    if audit is None or coordinator is None:
        raise AuditUnconfigured("this gateway has no audit log or no nodes to cosign with")
    outcome = await audit.publish_and_cosign(coordinator.nodes)
    actor = {"actor_user": who.user, "actor_agency": who.agency, "actor_role": who.role}
    await audit.record({"kind": "admin_action", **actor, "action": "publish_and_cosign", "tree_size": outcome["size"]})
    return outcome


@router.get("/proofs/inclusion")
def inclusion(
    who: Auditor, reader: Reader, index: Annotated[int, Query(ge=0)], size: Annotated[int, Query(ge=1)]
) -> dict[str, Any]:
    log = reader.log
    proof = log.inclusion_proof(index, size)
    leaf = log.entry(index).leaf_hash
    reader.record_read(who, "proof_inclusion", index=index, size=size)
    return {"index": index, "size": size, "leaf_hash": leaf.hex(), "root": log.root(size).hex(),
            "proof": [h.hex() for h in proof]}  # fmt: skip


@router.get("/proofs/consistency")
def consistency(
    who: Auditor, reader: Reader, old: Annotated[int, Query(ge=1)], new: Annotated[int, Query(ge=1)]
) -> dict[str, Any]:
    log = reader.log
    proof = log.consistency_proof(old, new)
    reader.record_read(who, "proof_consistency", old=old, new=new)
    return {"old": old, "new": new, "old_root": log.root(old).hex(), "new_root": log.root(new).hex(),
            "proof": [h.hex() for h in proof]}  # fmt: skip


@router.get("/alerts")
def alerts(
    who: Auditor,
    reader: Reader,
    services: ServicesDep,
    since: Annotated[datetime | None, Query(description="default: 24 hours ago")] = None,
    until: datetime | None = None,
    mode: ModeQuery = "strict",
) -> dict[str, Any]:
    since, until = aware(since) or datetime.now(UTC) - timedelta(days=1), aware(until)
    found = reader.alerts(since, until, services.alert_config, services.alert_scan_limit, mode=mode)
    returned = len(found["alerts"])
    reader.record_read(who, "alerts", since=since, until=until, scanned=found["scanned"], returned=returned)
    return found | {"since": since.isoformat(), "until": until.isoformat() if until else None}


@router.get("/log-key")
def log_key(who: Auditor, log: AuditLogDep, services: ServicesDep) -> dict[str, Any]:
    """The log's public key, for checking checkpoint signatures in the browser. Compare its
    key id with the one your federation published: a key served by the gateway proves nothing alone."""
    if services.public_key is None:
        return {"origin": log.origin, "public_key_b64": None, "key_id_hex": None}
    raw = raw_public(services.public_key)
    return {"origin": log.origin, "public_key_b64": base64.b64encode(raw).decode(),
            "key_id_hex": key_id(log.origin, ALG_ED25519, raw).hex()}  # fmt: skip


@router.post("/verify-log")
def verify_start(who: Auditor, reader: Reader, services: ServicesDep) -> dict[str, Any]:
    """Start a whole-log verification in the background (one at a time); poll with GET."""
    if services.verification is None:
        raise ConfigError("the log public key is not configured: the whole log cannot be verified here")
    reader.record_read(who, "verify_log", kind="admin_action")
    return services.verification.start(who.user)


@router.get("/verify-log")
def verify_status(who: Auditor, log: AuditLogDep, services: ServicesDep) -> dict[str, Any]:
    if services.verification is None:
        return {"state": "unavailable", "message": "the log public key is not configured on this gateway"}
    return services.verification.status()
