"""GET /v1/whoami: who the presented API key belongs to (the console asks before showing any page)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import OFFICER_ROLES, Caller

router = APIRouter(tags=["whoami"])


@router.get("/v1/whoami")
async def whoami(who: Caller) -> dict[str, Any]:
    return {"user": who.user, "agency": who.agency, "role": who.role, "tier": who.tier,
            "console_allowed": who.role in OFFICER_ROLES}  # fmt: skip
