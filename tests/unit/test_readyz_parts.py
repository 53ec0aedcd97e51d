"""/readyz's CRL and audit parts in process (the node part and a dead audit writer: test_observability)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from crypto import pki
from gateway.routes.ops import _audit_state, _crl_state
from gateway.services import Services


def _services(**kw: object) -> Services:
    return Services(authenticate=lambda request: None, **kw)  # type: ignore[arg-type, return-value]


def test_crl_part_refuses_a_stale_or_foreign_crl(tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path / "ca", "test CA")
    crl = tmp_path / "ca" / pki.CRL
    assert _crl_state(_services(crl=crl, ca_cert=tmp_path / "ca" / pki.CA_CERT))["ok"] is True
    pki.write_crl(ca, days=1, now=pki.utcnow() - dt.timedelta(days=10))  # past next update + 24 h grace
    stale = _crl_state(_services(crl=crl, ca_cert=tmp_path / "ca" / pki.CA_CERT))
    assert stale["ok"] is False and "stale" in stale["reason"]
    other = pki.init_ca(tmp_path / "other", "other CA")
    shutil.copy(pki.write_crl(other), crl)
    foreign = _crl_state(_services(crl=crl, ca_cert=tmp_path / "ca" / pki.CA_CERT))
    assert foreign["ok"] is False and "not signed by the federation CA" in foreign["reason"]


def test_audit_part_without_a_log_and_with_a_closed_one(tmp_path: Path) -> None:
    from audit import generate_key, save_keypair
    from gateway.audit import GatewayAudit

    assert _audit_state(_services())["ok"] is True  # nothing configured: nothing to wait for
    key, _ = save_keypair(generate_key(), tmp_path / "audit")
    audit = GatewayAudit.open(tmp_path / "audit.sqlite", key, {}, "thread")
    assert _audit_state(_services(audit=audit))["ok"] is True
    audit.close()
    closed = _audit_state(_services(audit=audit))
    assert closed["ok"] is False and closed["error"] == "audit_unavailable"
