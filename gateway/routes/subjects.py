"""GET /v1/subjects/{pseudonym}/accesses: who accessed one subject's data, and what came of it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from audit.store import MAX_PAGE, AuditLog, Entry
from gateway.deps import AuditLogDep, Auditor
from gateway.routes.audit import entry_view, record_read
from xgate.errors import InvalidInput
from xgate.pseudonym import PSEUDONYM_RE

router = APIRouter(tags=["subjects"])
KEEP = ("time", "kind", "program", "purpose", "legal_basis", "decision", "request_id", "case_id")


@router.get("/v1/subjects/{pseudonym}/accesses")
def accesses(
    pseudonym: str,
    who: Auditor,
    log: AuditLogDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    if not PSEUDONYM_RE.match(pseudonym):
        raise InvalidInput("subject must be a pseudonym")
    rows = log.entries(subject=pseudonym, offset=offset, limit=limit)
    record_read(log, who, "subject_accesses", subjects=(pseudonym,), offset=offset, returned=len(rows))
    return {
        "subject": pseudonym,
        "next_offset": offset + len(rows) if len(rows) == limit else None,
        "accesses": [
            {"index": e.index, "agency": e.record.actor.agency, "role": e.record.actor.role}
            | {k: v for k, v in entry_view(e)["record"].items() if k in KEEP}
            | {"outcome": _outcome(log, e)}
            for e in rows
        ],
    }


def _outcome(log: AuditLog, e: Entry) -> str:
    """What became of the exchange: its result entry (same request id) names no subjects itself."""
    rec = e.record
    if rec.decision == "deny":
        return "refused"
    if rec.kind != "policy_decision" or rec.request_id is None:
        return rec.kind
    return "answered" if log.entries(request_id=rec.request_id, kind="result", limit=1) else "not answered"
