"""The Federation page's data: each node's health, offered data elements, certificate, last contact.

Health and Describe are the nodes' own gRPC answers (gateway.fanout.NodeDirectory). Certificate
facts come from the CA-signed federation directory (verified against the CA before use), so the
page shows what the federation agreed on, not what a node claims about itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from xgate.errors import XgateError

EXPIRY_WARNING_DAYS = 14


class NodeProbe(Protocol):
    def agencies(self) -> list[str]: ...
    async def health(self, agency: str, deadline_s: float = 2.0) -> Any: ...
    async def describe(self, agency: str, deadline_s: float = 2.0) -> Any: ...


class ContactLog:
    """When the gateway last heard from each node (successful RPC), kept in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, datetime] = {}

    def seen(self, agency: str, when: datetime | None = None) -> None:
        with self._lock:
            self._last[agency] = when or datetime.now(UTC)

    def last(self, agency: str) -> datetime | None:
        with self._lock:
            return self._last.get(agency)


@dataclass(frozen=True)
class CertInfo:
    agency: str
    kind: str
    serial: str
    fingerprint: str
    not_after: datetime | None
    revoked: bool
    address: str

    def view(self, now: datetime) -> dict[str, Any]:
        days = None if self.not_after is None else (self.not_after - now).total_seconds() / 86400
        if self.revoked:
            status = "revoked"
        elif days is None:
            status = "unknown"
        elif days < 0:
            status = "expired"
        elif days < EXPIRY_WARNING_DAYS:
            status = "expiring"
        else:
            status = "valid"
        return {
            "serial": self.serial,
            "fingerprint": self.fingerprint,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "days_left": None if days is None else round(days, 1),
            "status": status,
            "address": self.address,
        }


def load_certificates(directory: Path | None, ca_cert: Path | None) -> tuple[dict[tuple[str, str], CertInfo], str]:
    """(agency, kind) -> certificate facts from the signed directory; '' or a reason it is unavailable."""
    if directory is None or ca_cert is None:
        return {}, "no federation directory configured (development gateway without TLS)"
    from crypto.pki import load_directory

    try:
        load_directory(directory, ca_cert)  # raises unless the CA's signature verifies
        doc = json.loads(directory.read_text())
    except (XgateError, OSError, ValueError) as exc:
        message = exc.message if isinstance(exc, XgateError) else "unreadable"
        return {}, f"federation directory refused: {message}"
    out = {}
    for e in doc.get("entries", []):
        raw = e.get("not_after")
        try:
            not_after = datetime.fromisoformat(raw) if raw else None
        except ValueError:
            not_after = None
        info = CertInfo(
            e["agency"],
            e["kind"],
            str(e["serial"]),
            e["fingerprint"],
            not_after,
            bool(e["revoked"]),
            e.get("address") or "",
        )
        out[(info.agency, info.kind)] = info
    return out, ""


def gateway_certificate(cert_path: Path | None) -> dict[str, Any] | None:
    if cert_path is None:
        return None
    from crypto.pki import fingerprint, load_cert

    try:
        cert = load_cert(cert_path)
    except (XgateError, OSError, ValueError):
        return None
    info = CertInfo(
        "gateway", "gateway", str(cert.serial_number), fingerprint(cert), cert.not_valid_after_utc, False, ""
    )
    return info.view(datetime.now(UTC))


async def _health(nodes: NodeProbe, agency: str, contacts: ContactLog, *, subjects: bool) -> dict[str, Any]:
    """`subjects`: include how many subjects the node holds (officers only: for a record-DP training
    store that is the row count the node only ever releases with noise)."""
    try:
        h = await nodes.health(agency)
    except XgateError as exc:
        return {"status": "unreachable", "error": exc.message}
    contacts.seen(agency)
    out: dict[str, Any] = {"status": h.status or "unknown", "version": h.version}
    if subjects:
        out["subjects"] = int(h.subjects)
    return out


async def node_health(nodes: NodeProbe, contacts: ContactLog) -> list[dict[str, Any]]:
    """Each node's status and version only (what any authenticated caller may see, without the
    subject count), probed concurrently."""
    agencies = nodes.agencies()
    found = await asyncio.gather(*(_health(nodes, a, contacts, subjects=False) for a in agencies))
    return [{"agency": a, "health": h} for a, h in zip(agencies, found, strict=True)]


async def _node(nodes: NodeProbe, agency: str, contacts: ContactLog) -> dict[str, Any]:
    health_t = asyncio.ensure_future(_health(nodes, agency, contacts, subjects=True))
    describe_t = asyncio.ensure_future(nodes.describe(agency))
    out: dict[str, Any] = {"agency": agency, "health": await health_t}
    try:
        d = await describe_t
        out["elements"] = [
            {"id": e.id, "type": e.type, "unit": e.unit, "classification": e.classification} for e in d.elements
        ]
        out["computations"] = list(d.computations)
        out["he_params_id"] = d.he_params_id
        contacts.seen(agency)
    except XgateError as exc:
        out["elements"], out["computations"], out["describe_error"] = [], [], exc.message
    last = contacts.last(agency)
    out["last_contact"] = last.isoformat(timespec="seconds") if last else None
    return out


async def node_statuses(
    nodes: NodeProbe, contacts: ContactLog, certs: dict[tuple[str, str], CertInfo]
) -> list[dict[str, Any]]:
    """Probe every node concurrently (each with its own short deadline)."""
    now = datetime.now(UTC)
    results = await asyncio.gather(*(_node(nodes, a, contacts) for a in nodes.agencies()))
    for r in results:
        cert = certs.get((r["agency"], "node"))
        r["certificate"] = cert.view(now) if cert else None
    return list(results)
