"""FastAPI edge of the gateway: the app, its middleware and error handlers; resources in routes/."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admission_control import AdmissionController, AdmissionMiddleware, AdmissionSettings
from gateway.api_contract import (
    ContractMiddleware,
    audited_route,
    contract_openapi,
    install_error_handlers,
    request_id_of,
)
from gateway.audit import REQUEST_ID, SERVICE_ACTOR, GatewayAudit
from gateway.routes import ROUTERS
from gateway.routes.console import mount_static
from gateway.services import Services
from xgate import __version__
from xgate.errors import AuditLogCompromised, XgateError, http_headers
from xgate.logging import get_logger

THREAD_POOL_SIZE = 32  # the checks in flight (admission caps them) plus room for short store calls

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
    app.add_middleware(
        AdmissionMiddleware, settings=admission, max_body_bytes=max_body_bytes, controller=services.admission
    )
    app.add_middleware(AuditEveryRequest, audit=services.audit)
    app.add_middleware(ContractMiddleware)  # outermost: the request id, int64 range, the one error shape
    app.openapi = contract_openapi(app)  # type: ignore[method-assign]
    install_error_handlers(app)  # one error shape with a request id (gateway/api_contract.py)
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
        # asyncio.to_thread's default pool has cpu_count + 4 threads (6 here): the HE combine of
        # the checks in flight would take them all and queue every short store call (idempotency
        # claim, policy decision, budget commit, audit) behind the long ones.
        # (The loop shuts its default executor down when it closes.)
        pool = ThreadPoolExecutor(max_workers=THREAD_POOL_SIZE, thread_name_prefix="xgate-gw")
        asyncio.get_running_loop().set_default_executor(pool)
        loop_task = None
        if audit is not None:
            if coordinator is not None:  # before appending anything: the log as found, against
                # what it signed and what its witnesses cosigned (recorded and alerted if damaged;
                # actions are then refused by the middleware below)
                with contextlib.suppress(AuditLogCompromised):
                    await audit.verify_history(coordinator.nodes, deadline_s=3.0)
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


def error_response(request: Request, exc: XgateError, status: int | None = None) -> JSONResponse:
    """An error's public body with the request id the caller can quote (also in X-Request-Id)."""
    body = exc.to_public()
    request_id = getattr(request.state, "request_id", None)
    if request_id is not None:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status or exc.http_status, headers=http_headers(exc))


def _is_action(method: str, path: str) -> bool:
    """What a compromised audit log refuses: every change under /v1/ except the officers' audit routes."""
    return method not in ("GET", "HEAD", "OPTIONS") and path.startswith("/v1/") and not path.startswith("/v1/audit/")


class AuditEveryRequest:
    """Records every /v1/ request in the audit log before its answer goes out: unrecorded means
    refused (503). Sees refusals (401, 413, 4xx) and errors (500) too; an entry names the route's
    template, not the raw path (`audited_route`). Every entry recorded while serving a request
    carries its id (REQUEST_ID).

    Plain ASGI rather than Starlette's BaseHTTPMiddleware: that one runs each request in anyio task
    groups whose cancellation is re-delivered on every turn of the event loop until the request's
    tasks unwind; under 1,000 clients that took a fifth of the loop (py-spy). The answer to a /v1/
    request is held until its entry is written (answers there are JSON); others stream through.
    """

    def __init__(self, app: ASGIApp, audit: GatewayAudit | None) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)  # given by ContractMiddleware (outside this one)
        path, method = scope["path"], scope["method"]
        state = scope.setdefault("state", {})
        audit = self.audit
        held: list[Message] = []
        status = 500
        answered = False

        async def hold(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            held.append(message)

        async def forward(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        audited = audit is not None and path.startswith("/v1/")
        out = hold if audited else forward
        if audit is not None and audit.compromised is not None and _is_action(method, path):
            state["error"] = audit.compromised.code  # a damaged log records no new actions
            await error_response(Request(scope), audit.compromised)(scope, receive, out)
        else:
            token = REQUEST_ID.set(request_id)
            try:
                await self.app(scope, receive, out)
            except Exception:  # what the 500 handler would answer, but recorded like every request
                if answered:
                    raise
                log.exception("request_failed", route=audited_route(scope, 500), request_id=request_id)
                state["error"] = "internal_error"
                held.clear()
                await error_response(Request(scope), XgateError("internal error"))(scope, receive, out)
            finally:
                REQUEST_ID.reset(token)
        if not audited or audit is None:
            return
        try:
            await audit.record_request(
                method,
                audited_route(scope, status),
                status,
                (time.perf_counter() - started) * 1000,
                state.get("principal"),
                state.get("error", ""),
                request_id,
                state.get("audit_extra"),
            )
        except XgateError as exc:  # unrecorded means refused
            held.clear()
            await error_response(Request(scope), exc, status=503)(scope, receive, hold)
        for message in held:
            await send(message)
