"""REST edge of the audit log for security officers (thin: all logic lives in audit/).

Every read of the log is itself appended (kind "audit_read") before the answer leaves, so who
looked at what is as tamper-evident as the events themselves; if that append fails, the read fails.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from audit.alerts import AlertConfig, evaluate
from audit.records import AuditRecord
from audit.store import MAX_PAGE, AuditLog, Entry
from xgate.errors import InvalidInput, XgateError
from xgate.pseudonym import PSEUDONYM_RE

F = TypeVar("F", bound=Callable[..., Any])


def _guard(fn: F) -> F:
    """Map xgate errors to their public JSON body (routers cannot carry exception handlers)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except XgateError as exc:
            return JSONResponse(exc.to_public(), status_code=exc.http_status)

    return wrapper  # type: ignore[return-value]


def _entry_view(e: Entry) -> dict[str, Any]:
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


# to split into routes/*.py (issue 12 item 5)
def build_audit_router(  # noqa: C901
    log: AuditLog,
    require_officer: Callable[[Request], Any],
    *,
    alert_config: AlertConfig | None = None,
    alert_scan_limit: int = 10_000,
) -> APIRouter:
    """Routes under /v1/audit and /v1/subjects; ``require_officer`` authenticates and authorises
    (sync or async, returns an object with ``user``, ``agency``, ``role``)."""
    router = APIRouter(tags=["audit"])
    alert_cfg = alert_config or AlertConfig()

    async def officer(request: Request) -> Any:
        who = require_officer(request)
        return await who if inspect.isawaitable(who) else who

    def record_read(
        who: Any, route: str, *, kind: str = "audit_read", subjects: tuple[str, ...] = (), **meta: Any
    ) -> None:
        clean = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in meta.items() if v is not None}
        actor = {"user": str(who.user), "agency": str(who.agency), "role": str(getattr(who, "role", "officer"))}
        event = {"kind": kind, "actor": actor, "subjects": subjects, "metadata": {"route": route, **clean}}
        log.append(AuditRecord.from_event(event))  # InvalidInput (400) if a filter cannot be recorded

    @router.get("/v1/audit/entries")
    @_guard
    def list_entries(
        who: Any = Depends(officer),
        agency: str | None = None,
        user: str | None = None,
        program: str | None = None,
        purpose: str | None = None,
        decision: str | None = Query(None, pattern="^(allow|deny)$"),
        subject: str | None = None,
        kind: str | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=MAX_PAGE),
    ) -> dict[str, Any]:
        if subject is not None and not PSEUDONYM_RE.match(subject):
            raise InvalidInput("subject must be a pseudonym")
        filters: dict[str, Any] = dict(
            agency=agency, user=user, program=program, purpose=purpose, decision=decision, subject=subject,
            kind=kind, request_id=request_id, since=since, until=until,
        )  # fmt: skip
        size = log.size
        rows = log.entries(**filters, offset=offset, limit=limit)
        subj = (subject,) if subject else ()
        meta = {f"filter_{k}": v for k, v in filters.items() if k != "subject"}
        record_read(who, "entries", subjects=subj, offset=offset, returned=len(rows), **meta)
        return {
            "tree_size": size,
            "offset": offset,
            "limit": limit,
            "next_offset": offset + len(rows) if len(rows) == limit else None,
            "entries": [_entry_view(e) for e in rows],
        }

    @router.get("/v1/audit/entries/{index}")
    @_guard
    def get_entry(index: int, who: Any = Depends(officer)) -> dict[str, Any]:
        entry = log.entry(index)
        cp = log.latest_checkpoint()
        proof = None
        if cp is not None and cp.checkpoint.size > index:
            proof = [h.hex() for h in log.inclusion_proof(index, cp.checkpoint.size)]
        record_read(who, "entry", index=index)
        return {
            **_entry_view(entry),
            "checkpoint": _checkpoint_view(cp) if cp else None,
            "inclusion_proof": proof,
        }

    @router.get("/v1/audit/checkpoints")
    @_guard
    def list_checkpoints(
        who: Any = Depends(officer), offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=MAX_PAGE)
    ) -> dict[str, Any]:
        cps = log.checkpoints(offset=offset, limit=limit)
        record_read(who, "checkpoints", offset=offset, returned=len(cps))
        return {"tree_size": log.size, "checkpoints": [_checkpoint_view(c) for c in cps]}

    @router.post("/v1/audit/checkpoints")
    @_guard
    def publish_checkpoint(who: Any = Depends(officer)) -> dict[str, Any]:
        cp = log.publish_checkpoint()
        record_read(who, "publish_checkpoint", kind="admin_action", size=cp.checkpoint.size)
        return _checkpoint_view(cp)

    @router.get("/v1/audit/proofs/inclusion")
    @_guard
    def inclusion(index: int = Query(..., ge=0), size: int = Query(..., ge=1), who: Any = Depends(officer)) -> Any:
        proof = log.inclusion_proof(index, size)
        leaf = log.entry(index).leaf_hash
        record_read(who, "proof_inclusion", index=index, size=size)
        return {"index": index, "size": size, "leaf_hash": leaf.hex(), "root": log.root(size).hex(),
                "proof": [h.hex() for h in proof]}  # fmt: skip

    @router.get("/v1/audit/proofs/consistency")
    @_guard
    def consistency(old: int = Query(..., ge=1), new: int = Query(..., ge=1), who: Any = Depends(officer)) -> Any:
        proof = log.consistency_proof(old, new)
        record_read(who, "proof_consistency", old=old, new=new)
        return {"old": old, "new": new, "old_root": log.root(old).hex(), "new_root": log.root(new).hex(),
                "proof": [h.hex() for h in proof]}  # fmt: skip

    @router.get("/v1/subjects/{pseudonym}/accesses")
    @_guard
    def accesses(
        pseudonym: str,
        who: Any = Depends(officer),
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=MAX_PAGE),
    ) -> dict[str, Any]:
        if not PSEUDONYM_RE.match(pseudonym):
            raise InvalidInput("subject must be a pseudonym")
        rows = log.entries(subject=pseudonym, offset=offset, limit=limit)
        record_read(who, "subject_accesses", subjects=(pseudonym,), offset=offset, returned=len(rows))
        keep = ("time", "kind", "program", "purpose", "legal_basis", "decision", "request_id", "case_id")
        return {
            "subject": pseudonym,
            "next_offset": offset + len(rows) if len(rows) == limit else None,
            "accesses": [
                {"index": e.index, "agency": e.record.actor.agency, "role": e.record.actor.role}
                | {k: v for k, v in _entry_view(e)["record"].items() if k in keep}
                | {"outcome": _outcome(e)}
                for e in rows
            ],
        }

    def _outcome(e: Entry) -> str:
        """What became of the exchange: its result entry (same request id) names no subjects itself."""
        rec = e.record
        if rec.decision == "deny":
            return "refused"
        if rec.kind != "policy_decision" or rec.request_id is None:
            return rec.kind
        return "answered" if log.entries(request_id=rec.request_id, kind="result", limit=1) else "not answered"

    @router.get("/v1/audit/alerts")
    @_guard
    def alerts(
        who: Any = Depends(officer),
        since: datetime | None = Query(None, description="default: 24 hours ago"),
        until: datetime | None = None,
    ) -> dict[str, Any]:
        if since is None:
            since = datetime.now(UTC) - timedelta(days=1)
        items: list[tuple[int, AuditRecord]] = []
        while len(items) < alert_scan_limit:
            page = log.entries(since=since, until=until, offset=len(items), limit=MAX_PAGE)
            items.extend((e.index, e.record) for e in page)
            if len(page) < MAX_PAGE:
                break
        found = evaluate(items, alert_cfg)
        record_read(who, "alerts", since=since, until=until, scanned=len(items), returned=len(found))
        return {"scanned": len(items), "truncated": len(items) >= alert_scan_limit,
                "alerts": [a.to_public() for a in found]}  # fmt: skip

    return router
