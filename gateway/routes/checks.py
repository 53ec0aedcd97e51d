"""POST /v1/checks: an eligibility check across the agencies' nodes.

The route translates the REST body to the domain request, calls the check service
(exchange/service.py) and translates its outcome back (gateway/models.py to_domain / from_domain).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.deps import Admission, Caller, Coordinator
from gateway.models import CheckRequest, CheckResponse, from_domain, to_domain

router = APIRouter(tags=["checks"])


@router.post("/v1/checks")
async def checks(
    request: Request, body: CheckRequest, caller: Caller, coordinator: Coordinator, slots: Admission
) -> CheckResponse:
    async with slots.slot(caller.agency, caller.user, getattr(request.state, "body_bytes", 0)):
        request_id = getattr(request.state, "request_id", None)  # the id the response carries
        return from_domain(await coordinator.service.run(caller, to_domain(body), request_id))
