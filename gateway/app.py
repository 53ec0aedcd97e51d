"""FastAPI edge of the gateway: authenticate, validate, call the core, map errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway.admission_control import AdmissionController, AdmissionMiddleware, AdmissionSettings
from gateway.audit import SERVICE_ACTOR, GatewayAudit
from gateway.checks import CheckCoordinator
from gateway.models import CheckRequest, CheckResponse, ProgramView
from xgate import __version__
from xgate.errors import XgateError, http_headers
from xgate.logging import get_logger
from xgate.principal import Principal

log = get_logger("xgate.gateway")
Authenticate = Callable[[Request], Principal | Awaitable[Principal]]


# to split into routes/*.py (issue 12 item 5)
def create_app(  # noqa: C901
    coordinator: CheckCoordinator,
    authenticate: Authenticate,
    max_body_bytes: int = 16 * 1024 * 1024,
    extra_routers: list[Any] | None = None,
    audit: GatewayAudit | None = None,
    checkpoint_interval_s: float = 60.0,
    on_ready: Callable[[], None] | None = None,
    on_shutdown: Sequence[Callable[[], None]] = (),
    admission: AdmissionSettings | None = None,
) -> FastAPI:
    admission = admission or AdmissionSettings()
    slots = AdmissionController(admission)

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        loop_task = None
        if audit is not None:
            await audit.record(
                {**SERVICE_ACTOR, "kind": "config_change", "event": "gateway_started", "version": __version__}
            )
            loop_task = asyncio.create_task(audit.run_checkpoints(coordinator.nodes, checkpoint_interval_s))
        if on_ready is not None:
            on_ready()  # only now is the gateway ready: its audit log took the start-up entry
        yield
        for stop in on_shutdown:  # e.g. a running training job's processes, before the log closes
            await asyncio.to_thread(stop)
        if loop_task is not None:
            loop_task.cancel()
        await coordinator.nodes.close()
        if audit is not None:
            audit.close()

    app = FastAPI(
        title="xgate gateway",
        version=__version__,
        description="Privacy-preserving cross-agency eligibility checks (BFV) under access policies.",
        lifespan=lifespan,
    )
    # Inside the audit middleware below, so its refusals (408, 413, 503, 504) are recorded too.
    app.add_middleware(AdmissionMiddleware, settings=admission, max_body_bytes=max_body_bytes)

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

    async def principal(request: Request) -> Principal:
        result = authenticate(request)
        caller = await result if isinstance(result, Awaitable) else result
        request.state.principal = caller
        return caller

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

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/programs", response_model=list[ProgramView])
    async def programs(caller: Principal = Depends(principal)) -> list[ProgramView]:
        return [
            ProgramView(
                id=p.id,
                version=p.version,
                title=p.header.title,
                purposes=list(p.header.purposes),
                requester_agencies=list(p.header.requester_agencies),
                criteria=[
                    {
                        "id": c.id,
                        "kind": c.kind.value,
                        "description": c.description,
                        "elements": [t.element for t in c.terms],
                    }
                    for c in p.criteria
                ],
                sha256=p.sha256,
            )
            for p in coordinator.programs.all()
        ]

    @app.get("/v1/nodes")
    async def nodes(caller: Principal = Depends(principal)) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for agency in coordinator.nodes.agencies():
            try:
                health = await coordinator.nodes.health(agency)
                out[agency] = {"status": health.status, "version": health.version, "subjects": health.subjects}
            except XgateError as exc:
                out[agency] = {"status": "unreachable", "error": exc.message}
        return out

    @app.post("/v1/checks", response_model=CheckResponse)
    async def checks(request: Request, body: CheckRequest, caller: Principal = Depends(principal)) -> CheckResponse:
        async with slots.slot(caller.agency, caller.user, getattr(request.state, "body_bytes", 0)):
            return await coordinator.run(caller, body)

    for router in extra_routers or []:
        app.include_router(router)
    return app
