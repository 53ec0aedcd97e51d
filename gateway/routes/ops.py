"""Operations: GET /readyz (can this gateway serve checks now?) and GET /metrics (Prometheus).

`/healthz` (routes/health.py) is liveness: the process answers. `/readyz` answers 200 only when
every configured node answers its Health RPC, the audit writer commits an (empty) transaction, the
policy set is loaded and the CRL is signed by the CA and within next update plus grace; otherwise
503 with each failed check named, so a load balancer stops sending traffic while e.g. the audit
log is unavailable (when `/healthz` alone said ok). Neither endpoint needs an API key or reveals
data: only component names, states and error codes. docs/OPERATIONS.md has a scrape config.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from gateway.deps import ServicesDep
from gateway.services import Services
from xgate import metrics
from xgate.errors import XgateError

router = APIRouter(tags=["operations"])
NODE_DEADLINE_S = 2.0


def _audit_state(services: Services) -> dict[str, Any]:
    if services.audit is None:
        return {"ok": True, "detail": "no audit log configured"}
    try:
        services.audit.log.ping(timeout=2.0)
    except (XgateError, TimeoutError, OSError, sqlite3.Error, RuntimeError) as exc:
        return {"ok": False, "error": getattr(exc, "code", type(exc).__name__), "reason": str(exc)[:200]}
    return {"ok": True, "size": services.audit.log.size}


def _crl_state(services: Services) -> dict[str, Any]:
    if services.crl is None or services.ca_cert is None:
        return {"ok": True, "detail": "no CRL configured"}
    from crypto.peers import check_crl, load_cert, load_crl, utcnow

    try:
        crl = load_crl(services.crl)
        check_crl(crl, load_cert(services.ca_cert), utcnow())  # signed by our CA, not past next update + grace
    except XgateError as exc:
        return {"ok": False, "error": exc.code, "reason": exc.message}
    return {"ok": True, "next_update": str(crl.next_update_utc)}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    coordinator = services.coordinator
    directory = coordinator.nodes if coordinator is not None else None
    agencies = directory.agencies() if directory is not None else []

    async def node_state(agency: str) -> dict[str, Any]:
        if directory is None:
            return {"ok": False, "error": "config_error", "reason": "no node directory"}
        try:
            await directory.health(agency, deadline_s=NODE_DEADLINE_S)
        except XgateError as exc:
            return {"ok": False, "error": exc.code, "reason": exc.message}
        return {"ok": True}

    nodes = dict(zip(agencies, await asyncio.gather(*(node_state(a) for a in agencies)), strict=True))
    checks: dict[str, Any] = {
        "nodes": nodes,
        "audit": await asyncio.to_thread(_audit_state, services),
        "policies": {"ok": services.policy is not None},
        "crl": _crl_state(services),
    }
    ready = coordinator is not None and all(n["ok"] for n in nodes.values())
    ready = ready and all(checks[k]["ok"] for k in ("audit", "policies", "crl"))
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)  # fmt: skip


@router.get("/metrics", response_class=PlainTextResponse)  # documented as text/plain (Prometheus text format)
async def prometheus(services: ServicesDep) -> Response:
    metrics.AUDIT_QUEUE_DEPTH.set(services.audit.pending if services.audit is not None else 0)
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
