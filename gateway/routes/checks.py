"""POST /v1/checks: an eligibility check across the agencies' nodes (gateway/checks.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.deps import Admission, Caller, Coordinator
from gateway.models import CheckRequest, CheckResponse

router = APIRouter(tags=["checks"])


@router.post("/v1/checks")
async def checks(
    request: Request, body: CheckRequest, caller: Caller, coordinator: Coordinator, slots: Admission
) -> CheckResponse:
    async with slots.slot(caller.agency, caller.user, getattr(request.state, "body_bytes", 0)):
        return await coordinator.run(caller, body)
