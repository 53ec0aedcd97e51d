"""/v1/contexts: register a requester's public HE context once; checks then name it by fingerprint.

`POST /v1/contexts` takes `{"public_context": "<base64>"}` (bounded by the gateway's body limit
and MAX_CONTEXT_BYTES), validates it as a TenSEAL BFV public context with the federation's
parameters (a context carrying a secret key or Galois keys, or other parameters, is a 400
`crypto_error`) and answers `{"fingerprint": "sha256:<hex>", "expires_at": ...}`; the same
context again renews it. `GET /v1/contexts/{fingerprint}` says whether the caller holds it
(404 `context_unknown` otherwise). Storage and bounds: gateway/contexts.py.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from gateway.deps import Caller, Contexts
from gateway.models import ContextRegistered, ContextRegistration

router = APIRouter(tags=["contexts"])


def _owner(agency: str, user: str) -> str:
    return f"{agency}/{user}"


@router.post("/v1/contexts", response_model=ContextRegistered)
async def register(body: ContextRegistration, caller: Caller, contexts: Contexts) -> ContextRegistered:
    data = body.context_bytes()
    fingerprint, expires = await asyncio.to_thread(contexts.register, _owner(caller.agency, caller.user), data)
    return ContextRegistered(fingerprint=fingerprint, expires_at=expires, bytes=len(data))


@router.get(
    "/v1/contexts/{fingerprint}",
    response_model=ContextRegistered,
    responses={404: {"description": "no context with this fingerprint is registered for the caller"}},
)
async def exists(fingerprint: str, caller: Caller, contexts: Contexts) -> ContextRegistered:
    expires = await asyncio.to_thread(contexts.expires_at, _owner(caller.agency, caller.user), fingerprint)
    return ContextRegistered(fingerprint=fingerprint, expires_at=expires)
