"""GET /v1/nodes: the agencies' nodes. Every caller sees each node's health (status, version);
security officers and administrators also see how many subjects it holds (a record-DP training
store's row count is otherwise only released with noise), what it describes (elements,
computations), its certificate from the signed federation directory and when the gateway last
reached it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from gateway.console.federation import gateway_certificate, load_certificates, node_health, node_statuses
from gateway.deps import OFFICER_ROLES, Caller, ServicesDep

router = APIRouter(tags=["nodes"])


@router.get("/v1/nodes")
async def nodes(who: Caller, services: ServicesDep) -> dict[str, Any]:
    probe = services.nodes
    checked_at = datetime.now(UTC).isoformat(timespec="seconds")
    if who.role not in OFFICER_ROLES:
        found = await node_health(probe, services.contacts) if probe is not None else []
        return {"nodes": found, "checked_at": checked_at}
    certs, cert_note = load_certificates(services.federation_directory, services.ca_cert)
    found = await node_statuses(probe, services.contacts, certs) if probe is not None else []
    return {
        "nodes": found,
        "certificates_note": cert_note or None,
        "gateway_certificate": gateway_certificate(services.gateway_cert),
        "checked_at": checked_at,
    }
