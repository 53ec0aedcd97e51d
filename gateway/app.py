"""FastAPI edge of the gateway: the app, its middleware and error handlers; resources in routes/."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway.admission_control import AdmissionController, AdmissionMiddleware, AdmissionSettings
from gateway.audit import SERVICE_ACTOR, GatewayAudit
from gateway.routes import ROUTERS
from gateway.routes.console import mount_static
from gateway.services import Services
from xgate import __version__
from xgate.errors import XgateError, http_headers
from xgate.logging import get_logger

log = get_logger("xgate.gateway")


def create_app(
    services: Services,
    *,
    max_body_bytes: int = 16 * 1024 * 1024,
    checkpoint_interval_s: float = 60.0,
    on_ready: Callable[[], None] | None = None,
    on_shutdown: Sequence[Callable[[], None]] = (),
    admission: AdmissionSettings | None = None,
) -> FastAPI:
    """The gateway's REST app: every resource of gateway/routes/, the console's pages at /console/."""
    admission = admission or AdmissionSettings()
    services.admission = AdmissionController(admission)
    app = FastAPI(
        title="xgate gateway",
        version=__version__,
        description="Privacy-preserving cross-agency eligibility checks (BFV) under access policies.",
        lifespan=_lifespan(services, checkpoint_interval_s, on_ready, on_shutdown),
    )
    app.state.services = services
    # Inside the audit middleware below, so its refusals (408, 413, 503, 504) are recorded too.
    app.add_middleware(AdmissionMiddleware, settings=admission, max_body_bytes=max_body_bytes)
    _audit_every_request(app, services.audit)
    _error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    mount_static(app)
    return app


def _lifespan(
    services: Services,
    checkpoint_interval_s: float,
    on_ready: Callable[[], None] | None,
    on_shutdown: Sequence[Callable[[], None]],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    audit, coordinator = services.audit, services.coordinator

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loop_task = None
        if audit is not None:
            await audit.record(
                {**SERVICE_ACTOR, "kind": "config_change", "event": "gateway_started", "version": __version__}
            )
            if coordinator is not None:
                loop_task = asyncio.create_task(audit.run_checkpoints(coordinator.nodes, checkpoint_interval_s))
        if on_ready is not None:
            on_ready()  # only now is the gateway ready: its audit log took the start-up entry
        yield
        for stop in on_shutdown:  # e.g. a running training job's processes, before the log closes
            await asyncio.to_thread(stop)
        if loop_task is not None:
            loop_task.cancel()
        if coordinator is not None:
            await coordinator.nodes.close()
        if audit is not None:
            audit.close()

    return lifespan


def _audit_every_request(app: FastAPI, audit: GatewayAudit | None) -> None:
    @app.middleware("http")
    async def audit_every_request(request: Request, call_next: Any) -> Any:
        # Outermost: sees refusals (401, 413, 4xx) and errors too. Paths carry at most pseudonyms.
        started = time.perf_counter()
        response = await call_next(request)
        if audit is not None and request.url.path.startswith("/v1/"):
            try:
                await audit.record_request(
                    request.method,
                    request.url.path,
                    response.status_code,
                    (time.perf_counter() - started) * 1000,
                    getattr(request.state, "principal", None),
                    getattr(request.state, "error", ""),
                )
            except XgateError as exc:  # unrecorded means refused
                return JSONResponse(exc.to_public(), status_code=503)
        return response


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(XgateError)
    async def _xgate_error(request: Request, exc: XgateError) -> JSONResponse:
        request.state.error = exc.code
        return JSONResponse(exc.to_public(), status_code=exc.http_status, headers=http_headers(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request_failed", path=request.url.path)
        return JSONResponse({"error": "internal_error", "message": "internal error"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.error = "invalid_input"
        problems = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "problem": e["msg"]} for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "body", "problem": "invalid"}
        return JSONResponse(
            {
                "error": "invalid_input",
                "message": f"{first['field'] or 'body'}: {first['problem']}",
                "details": {"problems": problems[:20]},
            },
            status_code=400,
        )
