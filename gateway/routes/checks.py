"""POST /v1/checks: an eligibility check across the agencies' nodes.

The route translates the REST body to the domain request, calls the check service
(exchange/service.py) and translates its outcome back (gateway/models.py to_domain / from_domain).

With an `Idempotency-Key` header (gateway/idempotency.py) a retried check is answered once: the
same key and body get the stored answer back (`Idempotent-Replayed: true`) without a new charge or
computation; while the first attempt runs, 409 with Retry-After; another body, 422. A failed
check drops its claim, so a retry computes afresh; a refusal charged as an answer (the register
node refusing a cohort member it does not know) is kept like one, so a retry replays it.

A claim abandoned by a dead gateway (past the `stale_at` its claimant wrote) is taken over, and
what the dead attempt still holds (its reservations, owned by its claim's token) is released
first. The check's reservations are owned by this claim, and its charge is fenced: committed only
while the claim is still held, otherwise released, and the winner's answer replayed (or 409).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from exchange.service import charged_refusal
from exchange.types import CheckOutcome
from gateway.api_contract import error_document
from gateway.audit import IDEMPOTENCY_KEY_SHA256
from gateway.deps import Admission, Caller, Coordinator, Idempotency, ServicesDep
from gateway.idempotency import (
    HEADER,
    REPLAYED_HEADER,
    Claim,
    IdempotencyStore,
    Replay,
    key_digest,
    request_digest,
    validate_key,
)
from gateway.models import CheckRequest, CheckResponse, from_domain, to_domain
from xgate.errors import ContextUnknown, IdempotencyInProgress, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.gateway.routes.checks")
router = APIRouter(tags=["checks"])
ROUTE = "POST /v1/checks"


@router.post(
    "/v1/checks",
    response_model=CheckResponse,
    responses={
        409: {"description": "a check with this Idempotency-Key is still running (Retry-After)"},
        422: {"description": "this Idempotency-Key was used for a different request"},
    },
)
async def checks(
    request: Request,
    body: CheckRequest,
    caller: Caller,
    coordinator: Coordinator,
    slots: Admission,
    idempotency: Idempotency,
    services: ServicesDep,
) -> Response:
    key = request.headers.get(HEADER)
    if key is not None:
        validate_key(key)
    claim: Claim | None = None
    if key is not None and idempotency is not None:
        owner = f"{caller.agency}/{caller.user}"
        digest = request_digest(ROUTE, body.model_dump(mode="json"))
        found = await asyncio.to_thread(idempotency.begin, owner, key, digest)
        if isinstance(found, Replay):
            digest = key_digest(key)
            request.state.audit_extra = {"idempotency_key_sha256": digest, "idempotent_replayed": True}
            log.info("check_replayed", key_sha256=digest)
            return Response(
                found.body, status_code=found.status, media_type="application/json", headers={REPLAYED_HEADER: "true"}
            )
        claim = found
        request.state.audit_extra = {"idempotency_key_sha256": claim.key_sha256}
        if claim.superseded:
            # The dead attempt's reservations go back before this one reserves: its one-time
            # consent or last budget slot must not refuse its own retry.
            released = await asyncio.to_thread(coordinator.service.release_owner, claim.superseded)
            log.warning("idempotency_takeover_released", key_sha256=claim.key_sha256, reservations=released)
    token = IDEMPOTENCY_KEY_SHA256.set(claim.key_sha256 if claim is not None else None)
    charged: list[CheckOutcome] = []
    try:
        async with slots.slot(caller.agency, caller.user, getattr(request.state, "body_bytes", 0)):
            request_id = getattr(request.state, "request_id", None)  # the id the response carries
            registered = await _registered(services, caller.agency, caller.user, body)
            domain = to_domain(body, registered)
            claimed: dict[str, Any] = {}
            if claim is not None and idempotency is not None:
                # The claim owns the check's reservations, and its charge is fenced by the claim.
                held, store = claim, idempotency
                claimed = {"owner": held.token, "fence": lambda: store.fence(held)}
            outcome = await coordinator.service.run(caller, domain, request_id, answered=charged.append, **claimed)
        answer = from_domain(outcome).model_dump_json().encode()
    except BaseException as exc:
        if claim is not None and idempotency is not None and isinstance(exc, IdempotencyInProgress):
            # Fenced off: another attempt took the key over; its answer, once it has one.
            won = await asyncio.to_thread(idempotency.replay, claim.owner, claim.key_sha256, digest)
            if won is not None:
                return Response(
                    won.body, status_code=won.status, media_type="application/json", headers={REPLAYED_HEADER: "true"}
                )
            raise
        if claim is not None and idempotency is not None:
            if charged:
                # Charged, then cancelled before it went out (deadline, client gone): a retry with
                # this key replays it rather than computing and charging it again.
                await _keep(idempotency, claim, from_domain(charged[0]).model_dump_json().encode())
            elif isinstance(exc, XgateError) and charged_refusal(exc):
                # Charged as an answer: a retry with this key gets the same refusal, not a second charge.
                refusal = error_document(request.scope, exc.code, exc.message, exc.details)
                await _keep(idempotency, claim, json.dumps(refusal).encode(), exc.http_status)
            else:
                await _settle(idempotency, claim)  # failed: a retry with this key computes afresh
        raise
    finally:
        IDEMPOTENCY_KEY_SHA256.reset(token)
    if claim is not None and idempotency is not None:
        try:
            await asyncio.to_thread(idempotency.complete, claim, 200, answer)
        # Any storage failure (either driver): the answer stands, it was charged; a retry with the key
        # gets 409 until the claim goes stale, then recomputes.
        except Exception as exc:  # noqa: BLE001
            log.warning("idempotency_store_failed", key_sha256=claim.key_sha256, error=type(exc).__name__)
    return Response(answer, media_type="application/json")


async def _registered(services: ServicesDep, agency: str, user: str, body: CheckRequest) -> bytes:
    """The registered context a HE check names (ContextUnknown, 404, when the caller holds none)."""
    if body.mode != "he" or not body.context_fingerprint:
        return b""
    if services.contexts is None:
        raise ContextUnknown("this gateway keeps no registered HE contexts: send public_context inline")
    return await asyncio.to_thread(services.contexts.get, f"{agency}/{user}", body.context_fingerprint)


async def _keep(store: IdempotencyStore, claim: Claim, answer: bytes, status: int = 200) -> None:
    """Store a charged answer under its key, even when the request is being cancelled."""
    await _to_the_end(lambda: store.complete(claim, status, answer))


async def _settle(store: IdempotencyStore, claim: Claim) -> None:
    """Drop the claim, even when the request is being cancelled."""
    await _to_the_end(lambda: store.release(claim))


async def _to_the_end(call: Callable[[], object]) -> None:
    """Run a store call off the event loop to its end, cancellation or not; a failure leaves the
    claim to go stale (a retry then computes afresh)."""
    task = asyncio.ensure_future(asyncio.to_thread(call))
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.shield(task)
