"""GET /v1/subjects/{pseudonym}/accesses: who accessed one subject's data, when, why, and what came of it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from audit.query import Filters, subject_accesses
from audit.store import MAX_PAGE
from gateway.deps import Auditor, Reader
from gateway.routes.audit import aware

router = APIRouter(tags=["subjects"])


@router.get("/v1/subjects/{pseudonym}/accesses")
def accesses(
    pseudonym: str,
    who: Auditor,
    reader: Reader,
    since: datetime | None = None,
    until: Annotated[datetime | None, Query(description="exclusive")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    """One row per access (user, agency, role, program, purpose, legal basis, case, decision,
    outcome, request id); the pseudonym is computed by the officer's own tools, never here."""
    period = Filters(subject=pseudonym, since=aware(since), until=aware(until))  # validates all three
    rows = subject_accesses(reader.log, pseudonym, since=period.since, until=period.until, offset=offset, limit=limit)
    reader.record_read(
        who, "subject_accesses", subjects=(pseudonym,), offset=offset, returned=len(rows),
        filter_since=period.since, filter_until=period.until,
    )  # fmt: skip
    return {
        "subject": pseudonym,
        "since": period.since.isoformat() if period.since else None,
        "until": period.until.isoformat() if period.until else None,
        "next_offset": offset + len(rows) if len(rows) == limit else None,
        "accesses": rows,
    }
