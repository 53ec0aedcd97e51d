"""The agencies' nodes: health for every caller; the operator's view (descriptions, certificates)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from gateway.console.federation import gateway_certificate, load_certificates, node_statuses
from gateway.deps import Caller, Coordinator, Officer, ServicesDep
from xgate.errors import XgateError

router = APIRouter(tags=["nodes"])


@router.get("/v1/nodes")
async def nodes(caller: Caller, coordinator: Coordinator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for agency in coordinator.nodes.agencies():
        try:
            health = await coordinator.nodes.health(agency)
            out[agency] = {"status": health.status, "version": health.version, "subjects": health.subjects}
        except XgateError as exc:
            out[agency] = {"status": "unreachable", "error": exc.message}
    return out


@router.get("/v1/federation/nodes")
async def federation_nodes(who: Officer, services: ServicesDep) -> dict[str, Any]:
    certs, cert_note = load_certificates(services.federation_directory, services.ca_cert)
    probe = services.nodes
    found = await node_statuses(probe, services.contacts, certs) if probe is not None else []
    return {
        "nodes": found,
        "certificates_note": cert_note or None,
        "gateway_certificate": gateway_certificate(services.gateway_cert),
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
