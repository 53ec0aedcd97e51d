"""Federated training jobs: an analyst submits one; its requester follows it; officers see them all.

POST /v1/training/jobs validates the job, decides Cedar action `train` on every registered dataset
the job reads (purpose, legal basis, approval reference), charges the job's ε to the gateway's
PrivacyLedger (all datasets or none), then runs `federated.runner.run_job` in a worker thread:
never on the event loop, one job at a time (a second submission meanwhile is 409). Each
data-owning node then admits the job under its own policy set and ledger
(federated.admission.PolicyAdmission). Every step and every runner event is appended to the
gateway's audit log (gateway/training_audit.py).

GET /v1/training/jobs/{id}/status answers the job's requester, security officers and the requesting
agency's admins; GET /v1/training/jobs[/{id}] is the operators' view (curves, privacy budgets):
security officers see every agency's jobs, an admin its own agency's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from federated.admission import job_of_charge_key
from gateway.console import training as jobs_view
from gateway.deps import Caller, Engine, Officer, ServicesDep, Training
from gateway.training_jobs import summary_of
from gateway.training_service import TrainingRequest, may_see_job
from xgate.errors import InvalidInput, NotFound, PayloadTooLarge

router = APIRouter(tags=["training"])
# A job definition is a few kB (features, encodings per feature, DP settings): far below the
# gateway's general body limit, which is sized for checks carrying ciphertexts.
MAX_JOB_BODY_BYTES = 256 * 1024
_BODY_SCHEMA = TrainingRequest.model_json_schema(ref_template="#/components/schemas/{model}")
_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": _BODY_SCHEMA}}}}


@router.post("/v1/training/jobs", status_code=202, openapi_extra=_BODY_DOC)
async def submit(request: Request, who: Caller, service: Training) -> JSONResponse:
    # The body is read only after authentication; Cedar, SQLite and the audit log's durable
    # append run in the thread pool, never on the event loop.
    raw = await request.body()
    if len(raw) > MAX_JOB_BODY_BYTES:
        raise PayloadTooLarge(f"a training job body is at most {MAX_JOB_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise InvalidInput("body: not valid JSON") from None
    accepted = await run_in_threadpool(service.submit, who, body)
    return JSONResponse(accepted, status_code=202, headers={"Location": accepted["status_url"]})


@router.get("/v1/training/jobs/{job_id}/status")
async def status(job_id: str, who: Caller, service: Training) -> Any:
    return await run_in_threadpool(service.status, who, job_id)


@router.get("/v1/training/jobs")
def jobs(who: Officer, services: ServicesDep, engine: Engine) -> dict[str, Any]:
    # An admin sees its own agency's jobs; security officers see every agency's (filtered before the
    # list's limit, so an admin still gets its agency's newest jobs).
    def visible(summary: dict[str, Any]) -> bool:
        return may_see_job(who, {"agency": summary.get("requester_agency")})

    listed = _with_other_replicas(jobs_view.list_jobs(services.jobs_dir, visible), services, visible)
    budgets = jobs_view.privacy_budgets(engine.directory, services.privacy_ledger)
    if who.role != "security_officer":
        # Per dataset the ε spent stays; which job spent it, only for the dataset's own agency or
        # for jobs the caller may see: another agency's job ids are not for this caller.
        shown = {j["job_id"] for j in listed}
        for budget in budgets:
            if budget["agency"] != who.agency:
                budget["jobs"] = [s for s in budget["jobs"] if job_of_charge_key(s["job_id"]) in shown]
    return {
        "jobs": listed,
        "budgets": budgets,
        "jobs_dir_configured": services.jobs_dir is not None and services.jobs_dir.is_dir(),
    }


@router.get("/v1/training/jobs/{job_id}")
def job(job_id: str, who: Officer, services: ServicesDep) -> dict[str, Any]:
    try:
        detail = jobs_view.job_detail(services.jobs_dir, job_id)
    except NotFound:
        stored = services.training.jobs.get(job_id) if services.training and services.training.jobs else None
        if stored is None:
            raise
        detail = summary_of(stored) | {"events": stored["events"]}
    if not may_see_job(who, {"agency": detail.get("requester_agency")}):
        # The answer a job that does not exist gets: another agency's job ids are not for this caller.
        raise NotFound("no such training job", job_id=job_id)
    return detail


def _with_other_replicas(
    local: list[dict[str, Any]], services: Any, visible: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Jobs that ran here (their directories) and those other replicas accepted (gateway/training_jobs.py)."""
    store = services.training.jobs if services.training is not None else None
    if store is None:
        return local
    seen = {j["job_id"] for j in local}
    recent = store.recent(jobs_view.MAX_JOBS, keep=lambda r: visible(summary_of(r)))
    others = [summary_of(r) for r in recent if r["job_id"] not in seen]
    for summary in others:
        summary.pop("decisions", None)
    return local + others
