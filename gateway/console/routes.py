"""The console's JSON endpoints and its static files, mounted on the gateway app by `mount_console`.

Every endpoint authenticates with the gateway's own API keys (Authorization: Bearer) and requires
the security_officer or admin role. Reads of the audit log are appended to the log (kind
"audit_read") before the answer leaves, as gateway/audit_routes.py does.
"""

from __future__ import annotations

import base64
import inspect
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit.alerts import AlertConfig
from audit.checkpoints import ALG_ED25519, CosignatureVerifier, EccKey, NoteVerifier, key_id, raw_public
from audit.records import AuditRecord
from audit.store import MAX_PAGE, AuditLog, connect
from gateway.console import auditview, policyview, training
from gateway.console.federation import ContactLog, NodeProbe, gateway_certificate, load_certificates, node_statuses
from gateway.console.verifyjob import LogVerification
from policies.types import AUDIT_LOG, AccessRequest
from xgate.errors import AuditUnconfigured, ConfigError, InvalidInput, PolicyDenied
from xgate.principal import Principal
from xgate.pseudonym import PSEUDONYM_RE

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONSOLE_ROLES = ("security_officer", "admin")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass
class ConsoleState:
    """What the console reads; built by mount_console, handy for tests."""

    authenticate: Callable[[Request], Any]
    audit_log: AuditLog | None
    policy: Any  # PolicyEngine | PolicyReloader | anything with .engine
    nodes: NodeProbe | None = None
    public_key: EccKey | None = None
    witnesses: Sequence[CosignatureVerifier] = ()
    federation_directory: Path | None = None
    ca_cert: Path | None = None
    gateway_cert: Path | None = None
    jobs_dir: Path | None = None
    privacy_ledger: Path | None = None
    alert_config: AlertConfig = field(default_factory=AlertConfig)
    alert_scan_limit: int = 20_000
    contacts: ContactLog = field(default_factory=ContactLog)
    verification: LogVerification | None = None
    _local: threading.local = field(default_factory=threading.local)

    def engine(self) -> Any:
        source = self.policy
        while hasattr(source, "engine"):  # CheckAuthorizer -> PolicyReloader -> PolicyEngine
            source = source.engine
        return source

    def log(self) -> AuditLog:
        if self.audit_log is None:
            raise AuditUnconfigured("this gateway has no audit log configured (gateway.audit_db)")
        return self.audit_log

    def reader(self) -> sqlite3.Connection:
        """A read-only connection per thread (raw rows, so altered entries can still be shown)."""
        log = self.log()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(log.path, readonly=True)
        return conn

    def verifier(self) -> NoteVerifier | None:
        if self.public_key is None or self.audit_log is None:
            return None
        return NoteVerifier(self.audit_log.origin, self.public_key)


def _record(
    log: AuditLog, who: Principal, route: str, *, kind: str = "audit_read", subjects: tuple[str, ...] = (), **meta: Any
) -> None:
    clean = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in meta.items() if v is not None}
    actor = {"user": who.user, "agency": who.agency, "role": who.role}
    log.append(
        AuditRecord.from_event(
            {"kind": kind, "actor": actor, "subjects": subjects, "metadata": {"route": route, **clean}}
        )
    )


def build_console_router(state: ConsoleState) -> APIRouter:  # noqa: C901  # to split into routes/*.py (issue 12 item 5)
    router = APIRouter(tags=["console"])

    async def caller(request: Request) -> Principal:
        result = state.authenticate(request)
        who: Principal = await result if inspect.isawaitable(result) else result
        request.state.principal = who
        return who

    async def officer(who: Principal = Depends(caller)) -> Principal:
        if who.role not in CONSOLE_ROLES:
            raise PolicyDenied("the console is for security officers and administrators", role=who.role)
        return who

    async def auditor(who: Principal = Depends(officer)) -> Principal:
        # Reading the log is itself a policy decision (baseline: security officers, security_audit).
        request = AccessRequest(
            principal=who.user,
            action="read_audit",
            resource=AUDIT_LOG,
            purpose="security_audit",
            requesting_agency=who.agency,
        )
        state.engine().decide(request).raise_if_denied()
        return who

    @router.get("/v1/console/whoami")
    async def whoami(who: Principal = Depends(caller)) -> dict[str, Any]:
        return {
            "user": who.user,
            "agency": who.agency,
            "role": who.role,
            "tier": who.tier,
            "console_allowed": who.role in CONSOLE_ROLES,
        }

    # -- exchanges (audit log) -----------------------------------------------------------------
    @router.get("/v1/console/entries")
    def entries(
        who: Principal = Depends(auditor),
        agency: str | None = None,
        user: str | None = None,
        program: str | None = None,
        purpose: str | None = None,
        decision: str | None = Query(None, pattern="^(allow|deny)$"),
        kind: str | None = None,
        request_id: str | None = None,
        subject: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        q: str | None = Query(None, max_length=128),
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=MAX_PAGE),
        order: str = Query("desc", pattern="^(asc|desc)$"),
    ) -> dict[str, Any]:
        log = state.log()
        if subject is not None and not PSEUDONYM_RE.match(subject):
            raise InvalidInput("subject must be a pseudonym (26 base32 characters)")
        filters = {
            "agency": agency,
            "user": user,
            "program": program,
            "purpose": purpose,
            "decision": decision,
            "kind": kind,
            "request_id": request_id,
            "subject": subject,
            "since": since,
            "until": until,
            "q": q or None,
        }
        size = log.size
        rows, total = auditview.query(
            state.reader(), size, filters, offset=offset, limit=limit, newest_first=order == "desc"
        )
        meta: dict[str, Any] = {f"filter_{k}": v for k, v in filters.items() if k != "subject"}
        _record(
            log,
            who,
            "console_entries",
            subjects=(subject,) if subject else (),
            offset=offset,
            returned=len(rows),
            **meta,
        )
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
    def entry(index: int, who: Principal = Depends(auditor)) -> dict[str, Any]:
        log = state.log()
        detail = auditview.entry_detail(log, state.reader(), index, state.verifier())
        rec = detail["record"] or {}
        detail["reason"] = auditview.reason_of(rec.get("metadata") or {}) if isinstance(rec, dict) else None
        _record(log, who, "console_entry", index=index, verdict=detail["server_verdict"]["status"])
        return detail

    @router.get("/v1/console/log-key")
    def log_key(who: Principal = Depends(auditor)) -> dict[str, Any]:
        """The log's public key, for checking checkpoint signatures in the browser. Compare its
        key id with the one your federation published: a key served by the gateway proves nothing alone."""
        log = state.log()
        if state.public_key is None:
            return {"origin": log.origin, "public_key_b64": None, "key_id_hex": None}
        raw = raw_public(state.public_key)
        return {
            "origin": log.origin,
            "public_key_b64": base64.b64encode(raw).decode(),
            "key_id_hex": key_id(log.origin, ALG_ED25519, raw).hex(),
        }

    # -- integrity -----------------------------------------------------------------------------
    @router.get("/v1/console/checkpoints")
    def checkpoints(
        who: Principal = Depends(auditor), offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=200)
    ) -> dict[str, Any]:
        log = state.log()
        witnesses = {w.name: w for w in state.witnesses}
        items, total = auditview.checkpoint_history(
            state.reader(), state.verifier(), witnesses, offset=offset, limit=limit
        )
        _record(log, who, "console_checkpoints", offset=offset, returned=len(items))
        return {
            "tree_size": log.size,
            "total": total,
            "offset": offset,
            "checkpoints": items,
            "log_key_configured": state.public_key is not None,
            "witnesses_configured": sorted(witnesses),
        }

    @router.post("/v1/console/checkpoints")
    def publish(who: Principal = Depends(auditor)) -> dict[str, Any]:
        log = state.log()
        cp = log.publish_checkpoint()
        _record(log, who, "console_publish_checkpoint", kind="admin_action", size=cp.checkpoint.size)
        return {"size": cp.checkpoint.size, "root": cp.checkpoint.root.hex()}

    @router.post("/v1/console/verify-log")
    def verify_start(who: Principal = Depends(auditor)) -> dict[str, Any]:
        log = state.log()
        if state.verification is None:
            raise ConfigError("the log public key is not configured: the whole log cannot be verified here")
        _record(log, who, "console_verify_log", kind="admin_action")
        return state.verification.start(who.user)

    @router.get("/v1/console/verify-log")
    def verify_status(who: Principal = Depends(auditor)) -> dict[str, Any]:
        if state.verification is None:
            return {"state": "unavailable", "message": "the log public key is not configured on this gateway"}
        return state.verification.status()

    # -- alerts --------------------------------------------------------------------------------
    @router.get("/v1/console/alerts")
    def alerts(
        who: Principal = Depends(auditor),
        since: datetime | None = Query(None, description="default: 24 hours ago"),
        until: datetime | None = None,
    ) -> dict[str, Any]:
        log = state.log()
        since = since or datetime.now(UTC) - timedelta(days=1)
        found = auditview.scan_alerts(
            state.reader(), log.size, since, until, state.alert_config, state.alert_scan_limit
        )
        _record(
            log,
            who,
            "console_alerts",
            since=since,
            until=until,
            scanned=found["scanned"],
            returned=len(found["alerts"]),
        )
        return found | {"since": since.isoformat(), "until": until.isoformat() if until else None}

    # -- federation ----------------------------------------------------------------------------
    @router.get("/v1/federation/nodes")
    async def federation_nodes(who: Principal = Depends(officer)) -> dict[str, Any]:
        certs, cert_note = load_certificates(state.federation_directory, state.ca_cert)
        nodes = await node_statuses(state.nodes, state.contacts, certs) if state.nodes is not None else []
        return {
            "nodes": nodes,
            "certificates_note": cert_note or None,
            "gateway_certificate": gateway_certificate(state.gateway_cert),
            "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    # -- policies ------------------------------------------------------------------------------
    @router.get("/v1/policies/agreements")
    def agreements(who: Principal = Depends(officer)) -> dict[str, Any]:
        engine = state.engine()
        registry = policyview.Registry.read(engine.directory)
        return {
            "policy_set_hash": engine.policy_set_hash,
            "reload_error": getattr(_reloader(state.policy), "last_error", None),
            "policies": policyview.agreements(engine),
            "elements": registry.elements,
            "purposes": registry.purposes,
            "principals": registry.principals,
        }

    @router.get("/v1/policies/who-can")
    def who_can(
        data_element: str = Query(..., min_length=3, max_length=200),
        action: str = Query("check", pattern="^(check|train|read_audit|administer)$"),
        who: Principal = Depends(officer),
    ) -> dict[str, Any]:
        return policyview.who_can(state.engine(), data_element, action)

    @router.post("/v1/policies/explain")
    def explain(body: Annotated[dict[str, Any], Body()], who: Principal = Depends(officer)) -> dict[str, Any]:
        engine = state.engine()
        return policyview.explain(engine, policyview.build_requests(body))

    # -- training ------------------------------------------------------------------------------
    @router.get("/v1/training/jobs")
    def jobs(who: Principal = Depends(officer)) -> dict[str, Any]:
        return {
            "jobs": training.list_jobs(state.jobs_dir),
            "budgets": training.privacy_budgets(state.engine().directory, state.privacy_ledger),
            "jobs_dir_configured": state.jobs_dir is not None and state.jobs_dir.is_dir(),
        }

    @router.get("/v1/training/jobs/{job_id}")
    def job(job_id: str, who: Principal = Depends(officer)) -> dict[str, Any]:
        return training.job_detail(state.jobs_dir, job_id)

    return router


def _reloader(policy: Any) -> Any:
    source = policy
    while hasattr(source, "engine") and not hasattr(source, "last_error"):
        source = source.engine
    return source


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


def _public_key(value: EccKey | Path | None) -> EccKey | None:
    if value is None or isinstance(value, EccKey):
        return value
    from audit.checkpoints import load_private_key, load_public_key
    from xgate.errors import CryptoError

    try:
        return load_public_key(value)
    except CryptoError:
        return load_private_key(value).public_key()


def mount_console(
    app: FastAPI,
    *,
    authenticate: Callable[[Request], Any],
    audit_log: AuditLog | None,
    policy: Any,
    nodes: NodeProbe | None = None,
    tls: Any = None,
    state_dir: Path | None = None,
    log_public_key: EccKey | Path | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    jobs_dir: Path | None = None,
    privacy_ledger: Path | None = None,
    alert_config: AlertConfig | None = None,
) -> ConsoleState:
    """Serve the console at /console/ and its JSON endpoints; returns the state for tests.

    `policy`: the PolicyReloader (or engine, or CheckAuthorizer); `tls`: the gateway's GatewayTls
    (federation directory, CA, own certificate) or None; `log_public_key`: the log's Ed25519 key
    (key object, or a PEM path, private or public); `jobs_dir` defaults to <state_dir>/jobs and
    `privacy_ledger` to <state_dir>/privacy.sqlite.
    """
    state = ConsoleState(
        authenticate=authenticate,
        audit_log=audit_log,
        policy=policy,
        nodes=nodes,
        public_key=_public_key(log_public_key),
        witnesses=tuple(witnesses),
        federation_directory=getattr(tls, "federation_directory", None),
        ca_cert=getattr(tls, "ca", None),
        gateway_cert=getattr(tls, "cert", None),
        jobs_dir=jobs_dir or (state_dir / "jobs" if state_dir else None),
        privacy_ledger=privacy_ledger or (state_dir / "privacy.sqlite" if state_dir else None),
        alert_config=alert_config or AlertConfig(),
    )
    if audit_log is not None and state.public_key is not None:
        log = audit_log

        def finished(status: dict[str, Any]) -> None:
            # Recorded by the gateway itself; the officer who asked is named in the metadata.
            gateway = Principal(user="gateway", agency="gateway", role="service", tier="gold")
            _record(
                log,
                gateway,
                "console_verify_log_result",
                kind="admin_action",
                result=str(status.get("state")),
                started_by=str(status.get("started_by", "")),
                altered=len(status.get("altered", [])),
            )

        state.verification = LogVerification(audit_log.path, state.public_key, state.witnesses, on_finish=finished)
    app.include_router(build_console_router(state))
    if not STATIC_DIR.is_dir():
        raise ConfigError("console static files are missing from the installation")
    app.mount("/console", _SecurityHeaders(StaticFiles(directory=STATIC_DIR, html=True)), name="console")
    return state
