"""POST /v1/training/jobs: an analyst submits a federated training job through the gateway.

The gateway validates the job, decides Cedar action `train` on every registered dataset the job
reads (purpose, legal basis, approval reference), charges the job's ε to its own PrivacyLedger
(all datasets or none), then runs `federated.runner.run_job` in a worker thread: never on the
event loop, one job at a time (a second submission meanwhile is 409). Each data-owning node then
admits the job under its own policy set and ledger (federated.admission.PolicyAdmission). Every
step and every runner event is appended to the gateway's audit log (gateway/training_audit.py).

GET /v1/training/jobs/{id}/status answers the job's requester, security officers and admins
(the console's GET /v1/training/jobs[/{id}] stays the officers' view).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gateway.training_service import (
    JobExists,
    TrainingBusy,
    TrainingNode,
    TrainingRequest,
    TrainingService,
    TrainingUnavailable,
    parse_request,
)
from xgate.errors import InvalidInput, XgateError, http_headers
from xgate.principal import Principal

__all__ = [
    "JobExists",
    "TrainingBusy",
    "TrainingNode",
    "TrainingService",
    "TrainingUnavailable",
    "build_training_router",
    "parse_request",
]


def _error(request: Request, exc: XgateError) -> JSONResponse:
    """The public JSON body (also when the router is mounted without the app's handlers)."""
    request.state.error = exc.code
    headers = http_headers(exc)
    return JSONResponse(exc.to_public(), status_code=exc.http_status, headers=headers)


def build_training_router(service: TrainingService, authenticate: Callable[[Request], Any]) -> APIRouter:
    router = APIRouter(tags=["training"])
    body_schema = TrainingRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}}}

    async def caller(request: Request) -> Principal:
        result = authenticate(request)
        who: Principal = await result if inspect.isawaitable(result) else result
        request.state.principal = who
        return who

    @router.post("/v1/training/jobs", status_code=202, openapi_extra=body_doc)
    async def submit(request: Request, who: Principal = Depends(caller)) -> JSONResponse:
        # The body is read only after authentication; Cedar, SQLite and the audit log's durable
        # append run in the thread pool, never on the event loop.
        try:
            try:
                body = json.loads(await request.body() or b"null")
            except ValueError:
                raise InvalidInput("body: not valid JSON") from None
            accepted = await run_in_threadpool(service.submit, who, body)
        except XgateError as exc:
            return _error(request, exc)
        return JSONResponse(accepted, status_code=202, headers={"Location": accepted["status_url"]})

    @router.get("/v1/training/jobs/{job_id}/status")
    async def status(request: Request, job_id: str, who: Principal = Depends(caller)) -> Any:
        try:
            return await run_in_threadpool(service.status, who, job_id)
        except XgateError as exc:
            return _error(request, exc)

    return router
