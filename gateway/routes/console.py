"""The console: its static pages at /console/, whoami, and its tamper-tolerant audit views.

The pages authenticate with the gateway's own API keys (Authorization: Bearer). Reads of the
audit log are appended to the log (kind "audit_read") before the answer leaves.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.checkpoints import ALG_ED25519, NoteVerifier, key_id, raw_public
from audit.store import MAX_PAGE, AuditLog, connect
from gateway.console import auditview
from gateway.deps import OFFICER_ROLES, AuditLogDep, Auditor, Caller, ServicesDep
from gateway.routes.audit import record_read
from gateway.services import Services
from xgate.errors import ConfigError, InvalidInput
from xgate.pseudonym import PSEUDONYM_RE

STATIC_DIR = Path(__file__).resolve().parent.parent / "console" / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
router = APIRouter(tags=["console"])
_local = threading.local()


def _reader(log: AuditLog) -> sqlite3.Connection:
    """A read-only connection per thread and log (raw rows, so altered entries can still be shown)."""
    conns: dict[str, sqlite3.Connection] = _local.__dict__.setdefault("conns", {})
    key = str(log.path)
    if key not in conns:
        conns[key] = connect(log.path, readonly=True)
    return conns[key]


def _verifier(services: Services, log: AuditLog) -> NoteVerifier | None:
    return None if services.public_key is None else NoteVerifier(log.origin, services.public_key)


@router.get("/v1/console/whoami")
async def whoami(who: Caller) -> dict[str, Any]:
    return {"user": who.user, "agency": who.agency, "role": who.role, "tier": who.tier,
            "console_allowed": who.role in OFFICER_ROLES}  # fmt: skip


@router.get("/v1/console/entries")
def entries(
    who: Auditor,
    log: AuditLogDep,
    agency: str | None = None,
    user: str | None = None,
    program: str | None = None,
    purpose: str | None = None,
    decision: Annotated[str | None, Query(pattern="^(allow|deny)$")] = None,
    kind: str | None = None,
    request_id: str | None = None,
    subject: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    q: Annotated[str | None, Query(max_length=128)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> dict[str, Any]:
    if subject is not None and not PSEUDONYM_RE.match(subject):
        raise InvalidInput("subject must be a pseudonym (26 base32 characters)")
    filters = {"agency": agency, "user": user, "program": program, "purpose": purpose, "decision": decision,
               "kind": kind, "request_id": request_id, "subject": subject, "since": since, "until": until,
               "q": q or None}  # fmt: skip
    size = log.size
    rows, total = auditview.query(_reader(log), size, filters, offset=offset, limit=limit, newest_first=order == "desc")
    meta: dict[str, Any] = {f"filter_{k}": v for k, v in filters.items() if k != "subject"}
    subjects = (subject,) if subject else ()
    record_read(log, who, "console_entries", subjects=subjects, offset=offset, returned=len(rows), **meta)
    cp = log.latest_checkpoint()
    views = []
    for e in rows:
        v = e.view()
        rec = v["record"] or {}
        v["reason"] = auditview.reason_of(rec.get("metadata") or {}) if isinstance(rec, dict) else None
        views.append(v)
    return {
        "tree_size": size,
        "checkpoint_size": cp.checkpoint.size if cp else 0,
        "total": total,
        "total_capped": total >= auditview.COUNT_CAP,
        "offset": offset,
        "limit": limit,
        "entries": views,
    }


@router.get("/v1/console/entries/{index}")
def entry(index: int, who: Auditor, log: AuditLogDep, services: ServicesDep) -> dict[str, Any]:
    detail = auditview.entry_detail(log, _reader(log), index, _verifier(services, log))
    rec = detail["record"] or {}
    detail["reason"] = auditview.reason_of(rec.get("metadata") or {}) if isinstance(rec, dict) else None
    record_read(log, who, "console_entry", index=index, verdict=detail["server_verdict"]["status"])
    return detail


@router.get("/v1/console/log-key")
def log_key(who: Auditor, log: AuditLogDep, services: ServicesDep) -> dict[str, Any]:
    """The log's public key, for checking checkpoint signatures in the browser. Compare its
    key id with the one your federation published: a key served by the gateway proves nothing alone."""
    if services.public_key is None:
        return {"origin": log.origin, "public_key_b64": None, "key_id_hex": None}
    raw = raw_public(services.public_key)
    return {"origin": log.origin, "public_key_b64": base64.b64encode(raw).decode(),
            "key_id_hex": key_id(log.origin, ALG_ED25519, raw).hex()}  # fmt: skip


@router.get("/v1/console/checkpoints")
def checkpoints(
    who: Auditor,
    log: AuditLogDep,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    witnesses = {w.name: w for w in services.witnesses}
    verifier = _verifier(services, log)
    items, total = auditview.checkpoint_history(_reader(log), verifier, witnesses, offset=offset, limit=limit)
    record_read(log, who, "console_checkpoints", offset=offset, returned=len(items))
    configured = {"log_key_configured": services.public_key is not None, "witnesses_configured": sorted(witnesses)}
    broken = services.audit.compromised if services.audit is not None else None
    state: dict[str, Any] = {"compromised": broken is not None}
    if broken is not None:  # the gateway found its log damaged and stopped signing (audit/integrity.py)
        state |= {"reason": str(broken.details.get("reason", "")), "message": broken.message}
    return {"tree_size": log.size, "total": total, "offset": offset, "checkpoints": items, "log_state": state,
            **configured}  # fmt: skip


@router.post("/v1/console/checkpoints")
def publish(who: Auditor, log: AuditLogDep) -> dict[str, Any]:
    cp = log.publish_checkpoint()
    record_read(log, who, "console_publish_checkpoint", kind="admin_action", size=cp.checkpoint.size)
    return {"size": cp.checkpoint.size, "root": cp.checkpoint.root.hex()}


@router.post("/v1/console/verify-log")
def verify_start(who: Auditor, log: AuditLogDep, services: ServicesDep) -> dict[str, Any]:
    if services.verification is None:
        raise ConfigError("the log public key is not configured: the whole log cannot be verified here")
    record_read(log, who, "console_verify_log", kind="admin_action")
    return services.verification.start(who.user)


@router.get("/v1/console/verify-log")
def verify_status(who: Auditor, log: AuditLogDep, services: ServicesDep) -> dict[str, Any]:
    if services.verification is None:
        return {"state": "unavailable", "message": "the log public key is not configured on this gateway"}
    return services.verification.status()


@router.get("/v1/console/alerts")
def alerts(
    who: Auditor,
    log: AuditLogDep,
    services: ServicesDep,
    since: Annotated[datetime | None, Query(description="default: 24 hours ago")] = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    since = since or datetime.now(UTC) - timedelta(days=1)
    found = auditview.scan_alerts(
        _reader(log), log.size, since, until, services.alert_config, services.alert_scan_limit
    )
    returned = len(found["alerts"])
    record_read(log, who, "console_alerts", since=since, until=until, scanned=found["scanned"], returned=returned)
    return found | {"since": since.isoformat(), "until": until.isoformat() if until else None}


class _SecurityHeaders:
    """Strict CSP and friends on the console's static files (no inline script, no framing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-cache"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_static(app: FastAPI) -> None:
    """Serve the console's pages at /console/ (they call the same public API as every client)."""
    if not STATIC_DIR.is_dir():
        raise ConfigError("console static files are missing from the installation")
    app.mount("/console", _SecurityHeaders(StaticFiles(directory=STATIC_DIR, html=True)), name="console")
