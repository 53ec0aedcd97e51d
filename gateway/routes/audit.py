"""The audit log for security officers: entries, checkpoints, proofs, alerts (all logic in audit/).

Every read of the log is itself appended (kind "audit_read") before the answer leaves, so who
looked at what is as tamper-evident as the events themselves; if that append fails, the read fails.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from audit.alerts import evaluate
from audit.query import Filters, find
from audit.records import AuditRecord
from audit.store import MAX_PAGE, AuditLog, Entry
from gateway.audit import REQUEST_ID
from gateway.deps import AuditLogDep, Auditor, ServicesDep
from xgate.errors import AuditUnconfigured
from xgate.principal import Principal

router = APIRouter(tags=["audit"])
Offset = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


def record_read(
    log: AuditLog, who: Principal, route: str, *, kind: str = "audit_read", subjects: tuple[str, ...] = (), **meta: Any
) -> None:
    """Append who read what, under the request's id; raises InvalidInput (400) if a filter cannot be recorded."""
    clean = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in meta.items() if v is not None}
    actor = {"user": str(who.user), "agency": str(who.agency), "role": str(who.role)}
    event: dict[str, Any] = {"kind": kind, "actor": actor, "subjects": subjects, "metadata": {"route": route, **clean}}
    event["request_id"] = REQUEST_ID.get()
    log.append(AuditRecord.from_event(event))


def aware(value: datetime | None) -> datetime | None:
    """A time given without a zone is UTC (as it always was here)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def entry_view(e: Entry) -> dict[str, Any]:
    return {
        "index": e.index,
        "leaf_hash": e.leaf_hash.hex(),
        "record": e.record.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def _checkpoint_view(cp: Any) -> dict[str, Any]:
    return {
        "origin": cp.checkpoint.origin,
        "size": cp.checkpoint.size,
        "root": cp.checkpoint.root.hex(),
        "note": cp.text(),
        "signers": [s.name for s in cp.signatures],
    }


@router.get("/v1/audit/entries")
def list_entries(
    who: Auditor,
    log: AuditLogDep,
    agency: str | None = None,
    user: str | None = None,
    program: str | None = None,
    purpose: str | None = None,
    decision: Annotated[str | None, Query(pattern="^(allow|deny)$")] = None,
    subject: str | None = None,
    kind: str | None = None,
    request_id: str | None = None,
    status: Annotated[int | None, Query(ge=100, le=599, description="`request` entries answered so")] = None,
    refused: Annotated[bool, Query(description="`request` entries answered with a refusal (4xx)")] = False,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: Offset = 0,
    limit: Limit = 100,
) -> dict[str, Any]:
    filters = Filters(
        agency=agency, user=user, program=program, purpose=purpose, decision=decision, subject=subject,
        kind=kind, request_id=request_id, status=status, refused=refused, since=aware(since), until=aware(until),
    )  # fmt: skip
    size = log.size
    rows = find(log, filters, offset=offset, limit=limit)
    subj = (subject,) if subject else ()
    meta = {f"filter_{k}": v for k, v in filters.active().items() if k != "subject"}
    record_read(log, who, "entries", subjects=subj, offset=offset, returned=len(rows), **meta)
    return {
        "tree_size": size,
        "offset": offset,
        "limit": limit,
        "next_offset": offset + len(rows) if len(rows) == limit else None,
        "entries": [entry_view(e) for e in rows],
    }


@router.get("/v1/audit/entries/{index}")
def get_entry(index: int, who: Auditor, log: AuditLogDep) -> dict[str, Any]:
    entry = log.entry(index)
    cp = log.latest_checkpoint()
    proof = None
    if cp is not None and cp.checkpoint.size > index:
        proof = [h.hex() for h in log.inclusion_proof(index, cp.checkpoint.size)]
    record_read(log, who, "entry", index=index)
    return {**entry_view(entry), "checkpoint": _checkpoint_view(cp) if cp else None, "inclusion_proof": proof}


@router.get("/v1/audit/checkpoints")
def list_checkpoints(who: Auditor, log: AuditLogDep, offset: Offset = 0, limit: Limit = 20) -> dict[str, Any]:
    cps = log.checkpoints(offset=offset, limit=limit)
    record_read(log, who, "checkpoints", offset=offset, returned=len(cps))
    return {"tree_size": log.size, "checkpoints": [_checkpoint_view(c) for c in cps]}


@router.post("/v1/audit/checkpoints")
def publish_checkpoint(who: Auditor, log: AuditLogDep) -> dict[str, Any]:
    cp = log.publish_checkpoint()
    record_read(log, who, "publish_checkpoint", kind="admin_action", size=cp.checkpoint.size)
    return _checkpoint_view(cp)


@router.post("/v1/audit/checkpoints/cosign")
async def cosign_now(who: Auditor, services: ServicesDep) -> dict[str, Any]:
    """Publish a checkpoint now and collect the nodes' cosignatures."""
    audit, coordinator = services.audit, services.coordinator
    if audit is None or coordinator is None:
        raise AuditUnconfigured("this gateway has no audit log or no nodes to cosign with")
    outcome = await audit.publish_and_cosign(coordinator.nodes)
    actor = {"actor_user": who.user, "actor_agency": who.agency, "actor_role": who.role}
    await audit.record({"kind": "admin_action", **actor, "action": "publish_and_cosign", "tree_size": outcome["size"]})
    return outcome


@router.get("/v1/audit/proofs/inclusion")
def inclusion(
    who: Auditor, log: AuditLogDep, index: Annotated[int, Query(ge=0)], size: Annotated[int, Query(ge=1)]
) -> dict[str, Any]:
    proof = log.inclusion_proof(index, size)
    leaf = log.entry(index).leaf_hash
    record_read(log, who, "proof_inclusion", index=index, size=size)
    return {"index": index, "size": size, "leaf_hash": leaf.hex(), "root": log.root(size).hex(),
            "proof": [h.hex() for h in proof]}  # fmt: skip


@router.get("/v1/audit/proofs/consistency")
def consistency(
    who: Auditor, log: AuditLogDep, old: Annotated[int, Query(ge=1)], new: Annotated[int, Query(ge=1)]
) -> dict[str, Any]:
    proof = log.consistency_proof(old, new)
    record_read(log, who, "proof_consistency", old=old, new=new)
    return {"old": old, "new": new, "old_root": log.root(old).hex(), "new_root": log.root(new).hex(),
            "proof": [h.hex() for h in proof]}  # fmt: skip


@router.get("/v1/audit/alerts")
def alerts(
    who: Auditor,
    log: AuditLogDep,
    services: ServicesDep,
    since: Annotated[datetime | None, Query(description="default: 24 hours ago")] = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    since = since or datetime.now(UTC) - timedelta(days=1)
    cap = services.alert_scan_limit
    items: list[tuple[int, AuditRecord]] = []
    while len(items) < cap:
        page = log.entries(since=since, until=until, offset=len(items), limit=MAX_PAGE)
        items.extend((e.index, e.record) for e in page)
        if len(page) < MAX_PAGE:
            break
    found = evaluate(items, services.alert_config)
    record_read(log, who, "alerts", since=since, until=until, scanned=len(items), returned=len(found))
    return {"scanned": len(items), "truncated": len(items) >= cap, "alerts": [a.to_public() for a in found]}
