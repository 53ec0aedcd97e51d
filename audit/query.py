"""The officer's questions over an audit log: filters, one flat row per entry, subject accesses.

Shared by `xgate audit query` / `xgate audit report` (on a database file) and the REST routes
(on the gateway's live log). Subjects are only ever pseudonyms here: an officer who starts from a
national id pseudonymises it on their own side with the federation key (xgate/pseudonym.py).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from audit.records import is_record_kind
from audit.store import MAX_PAGE, AuditLog, Entry
from xgate.errors import InvalidInput
from xgate.pseudonym import PSEUDONYM_RE

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

OutputFormat = Literal["table", "json", "csv"]


@dataclass(frozen=True)
class Filters:
    """Every filter an officer can combine; None / False means not filtered."""

    subject: str | None = None  # a pseudonym
    user: str | None = None
    agency: str | None = None
    program: str | None = None
    purpose: str | None = None
    kind: str | None = None
    decision: str | None = None
    request_id: str | None = None
    status: int | None = None
    refused: bool = False
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.subject is not None and not PSEUDONYM_RE.match(self.subject):
            raise InvalidInput("subject must be a pseudonym (26 base32 characters)")
        if self.kind is not None and not is_record_kind(self.kind):
            raise InvalidInput("kind must be a record kind (request, result, node_response, audit_read, training_…)")
        if self.decision is not None and self.decision not in ("allow", "deny"):
            raise InvalidInput("decision must be allow or deny")
        if self.status is not None and not 100 <= self.status <= 599:
            raise InvalidInput("status must be an HTTP status (100-599)")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidInput(f"{name} must carry a time zone (e.g. 2026-03-04T00:00:00+08:00)")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise InvalidInput("until must be later than since")

    def active(self) -> dict[str, Any]:
        """The filters set, for recording a read (times as ISO text)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value is False:
                continue
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def find(log: AuditLog, filters: Filters, *, offset: int = 0, limit: int = 100) -> list[Entry]:
    """One page of entries matching every filter, oldest first."""
    args = asdict(filters)
    return log.entries(**args, offset=offset, limit=limit)


def find_all(log: AuditLog, filters: Filters, *, cap: int = 100_000) -> Iterator[Entry]:
    """Every matching entry (paged), at most ``cap``."""
    offset = 0
    while offset < cap:
        page = find(log, filters, offset=offset, limit=min(MAX_PAGE, cap - offset))
        yield from page
        if len(page) < MAX_PAGE:
            return
        offset += len(page)


ROW_COLUMNS = (
    "index",
    "time",
    "kind",
    "request_id",
    "user",
    "agency",
    "role",
    "program",
    "purpose",
    "legal_basis",
    "decision",
    "status",
    "route",
    "error",
    "subjects",
)


def row(entry: Entry) -> dict[str, Any]:
    """A flat, printable view of one entry (the full record stays available as JSON)."""
    rec = entry.record
    meta = rec.metadata
    return {
        "index": entry.index,
        "time": rec.time.isoformat().replace("+00:00", "Z"),
        "kind": rec.kind,
        "request_id": rec.request_id,
        "user": rec.actor.user,
        "agency": rec.actor.agency,
        "role": rec.actor.role,
        "program": rec.program,
        "purpose": rec.purpose,
        "legal_basis": rec.legal_basis,
        "decision": rec.decision,
        "status": meta.get("status"),
        "route": meta.get("route"),
        "error": meta.get("error"),
        "subjects": len(rec.subjects),
    }


ACCESS_COLUMNS = (
    "index",
    "time",
    "user",
    "agency",
    "role",
    "program",
    "purpose",
    "legal_basis",
    "case_id",
    "decision",
    "outcome",
    "request_id",
)


def outcome(log: AuditLog, entry: Entry) -> str:
    """What became of an exchange: a decision entry's result entry (same request id) says it was answered."""
    rec = entry.record
    if rec.decision == "deny":
        return "refused"
    if rec.kind != "policy_decision" or rec.request_id is None:
        return rec.kind
    return "answered" if log.entries(request_id=rec.request_id, kind="result", limit=1) else "not answered"


def access(log: AuditLog, entry: Entry) -> dict[str, Any]:
    """One access to a subject: who, when, which agency, program, purpose, legal basis, outcome."""
    rec = entry.record
    return {
        "index": entry.index,
        "time": rec.time.isoformat().replace("+00:00", "Z"),
        "kind": rec.kind,
        "user": rec.actor.user,
        "agency": rec.actor.agency,
        "role": rec.actor.role,
        "program": rec.program,
        "purpose": rec.purpose,
        "legal_basis": rec.legal_basis,
        "case_id": rec.case_id,
        "decision": rec.decision,
        "outcome": outcome(log, entry),
        "request_id": rec.request_id,
    }


def subject_accesses(
    log: AuditLog,
    pseudonym: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Who accessed this subject in the period, and why: every entry naming the pseudonym (the
    policy decisions of checks, with their outcome, and officers' reads of the log about them)."""
    filters = Filters(subject=pseudonym, since=since, until=until)
    return [access(log, e) for e in find(log, filters, offset=offset, limit=limit)]


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: OutputFormat) -> str:
    """Rows as an aligned text table, JSON (one array) or CSV (with a header)."""
    if fmt == "json":
        return json.dumps(list(rows), indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in columns})
        return buf.getvalue()
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines) + "\n"


def time_zone(name: str) -> ZoneInfo:
    """An IANA time zone by name; InvalidInput names it when there is none such (or it is a path)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory such as "Asia"
        raise InvalidInput(f"--tz: no time zone '{name[:64]}' (an IANA name, such as Asia/Shanghai or UTC)") from None


def parse_when(text: str, timezone: str = "Asia/Shanghai", *, now: datetime | None = None) -> datetime:
    """An officer's time: ISO 8601 (a date alone means its midnight), or ``today`` / ``yesterday``;
    without a zone, local time in ``timezone``."""
    from datetime import timedelta

    tz = time_zone(timezone)
    word = text.strip().lower()
    if word in ("today", "yesterday"):
        local = (now or datetime.now(tz)).astimezone(tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight - timedelta(days=1) if word == "yesterday" else midnight
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"'{text[:40]}' is not a time (ISO 8601, e.g. 2026-03-04 or 2026-03-04T09:00+08:00)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=tz)


def row_from_view(view: dict[str, Any]) -> dict[str, Any]:
    """``row`` for an entry as the REST API returns it ({index, leaf_hash, record})."""
    rec = view["record"]
    meta = rec.get("metadata", {})
    actor = rec.get("actor", {})
    return {
        "index": view["index"],
        "time": rec.get("time"),
        "kind": rec.get("kind"),
        "request_id": rec.get("request_id"),
        "user": actor.get("user"),
        "agency": actor.get("agency"),
        "role": actor.get("role"),
        "program": rec.get("program"),
        "purpose": rec.get("purpose"),
        "legal_basis": rec.get("legal_basis"),
        "decision": rec.get("decision"),
        "status": meta.get("status"),
        "route": meta.get("route"),
        "error": meta.get("error"),
        "subjects": len(rec.get("subjects", [])),
    }
