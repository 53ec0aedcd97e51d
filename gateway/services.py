"""What the REST routes work with: one `Services` per app, built by gateway/server.py (or a test).

Route modules (gateway/routes/*.py) never build anything themselves: they take the services
they need through the Annotated dependencies of gateway/deps.py, which read this object from
``app.state.services``. A service that is not configured (no audit log, no training) is None,
and the routes that need it answer 503 with a message saying what is missing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request

from audit.alerts import AlertConfig
from audit.checkpoints import CosignatureVerifier, EccKey, load_private_key, load_public_key
from audit.records import AuditRecord
from gateway.console.federation import ContactLog, NodeProbe
from gateway.console.verifyjob import LogVerification
from xgate.errors import CryptoError
from xgate.principal import Principal

if TYPE_CHECKING:
    from audit.store import AuditLog
    from gateway.admission_control import AdmissionController
    from gateway.audit import GatewayAudit
    from gateway.checks import CheckCoordinator
    from gateway.contexts import ContextStore
    from gateway.idempotency import IdempotencyStore
    from gateway.training_service import TrainingService
    from policies.approvals import ApprovalRegistry
    from policies.budgets import PrivacyLedger
    from policies.consent import ConsentRegistry

Authenticate = Callable[[Request], Principal | Awaitable[Principal]]
GATEWAY_PRINCIPAL = Principal(user="gateway", agency="gateway", role="service", tier="gold")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    """The gateway's services as the routes see them (mutable: tests swap parts in place)."""

    authenticate: Authenticate
    coordinator: CheckCoordinator | None = None
    policy: Any = None  # PolicyReloader | PolicyEngine | CheckAuthorizer: anything with .engine chains
    audit: GatewayAudit | None = None  # the gateway's own writer side (request log, cosigning)
    audit_log: AuditLog | None = None
    consents: ConsentRegistry | None = None
    approvals: ApprovalRegistry | None = None
    training: TrainingService | None = None
    nodes: NodeProbe | None = None
    clock: Callable[[], datetime] = _now
    public_key: EccKey | None = None  # the audit log's checkpoint key (public half)
    witnesses: Sequence[CosignatureVerifier] = ()
    federation_directory: Path | None = None
    ca_cert: Path | None = None
    crl: Path | None = None  # the CRL in force (/readyz: fresh?)
    gateway_cert: Path | None = None
    jobs_dir: Path | None = None
    privacy_ledger: PrivacyLedger | Path | None = None  # the gateway's ε ledger (or its SQLite file)
    alert_config: AlertConfig = field(default_factory=AlertConfig)
    alert_scan_limit: int = 20_000
    contacts: ContactLog = field(default_factory=ContactLog)
    verification: LogVerification | None = None
    admission: AdmissionController | None = None  # set by create_app from its AdmissionSettings
    idempotency: IdempotencyStore | None = None  # POST /v1/checks Idempotency-Key (gateway/idempotency.py)
    contexts: ContextStore | None = None  # registered HE public contexts (gateway/contexts.py)

    def __post_init__(self) -> None:
        if self.audit is not None and self.audit_log is None:
            self.audit_log = self.audit.log
        if self.verification is None and self.audit_log is not None and self.public_key is not None:
            self.verification = _verification(self.audit_log, self.public_key, self.witnesses)


def _verification(log: AuditLog, key: EccKey, witnesses: Sequence[CosignatureVerifier]) -> LogVerification:
    def finished(status: dict[str, Any]) -> None:
        # Recorded by the gateway itself; the officer who asked is named in the metadata.
        meta = {
            "route": "verify_log_result",
            "result": str(status.get("state")),
            "started_by": str(status.get("started_by", "")),
            "altered": len(status.get("altered", [])),
        }
        actor = {"user": GATEWAY_PRINCIPAL.user, "agency": GATEWAY_PRINCIPAL.agency, "role": GATEWAY_PRINCIPAL.role}
        log.append(AuditRecord.from_event({"kind": "admin_action", "actor": actor, "metadata": meta}))

    return LogVerification(log.path, key, witnesses, on_finish=finished)


def public_key_of(value: EccKey | Path | None) -> EccKey | None:
    """The log's public key from a key object or a PEM file (private or public)."""
    if value is None or isinstance(value, EccKey):
        return value
    try:
        return load_public_key(value)
    except CryptoError:
        return load_private_key(value).public_key()
