"""GET /v1/programs: the eligibility programmes this gateway runs, with their criteria."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import Caller, Coordinator
from gateway.models import ProgramView

router = APIRouter(tags=["programs"])


@router.get("/v1/programs")
async def programs(caller: Caller, coordinator: Coordinator) -> list[ProgramView]:
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
