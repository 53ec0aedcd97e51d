"""The policy set for operators: agreements, who can reach an element, and why a request is decided."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from gateway.console import policyview
from gateway.deps import Engine, Officer, ServicesDep

router = APIRouter(prefix="/v1/policies", tags=["policies"])


@router.get("/agreements")
def agreements(who: Officer, engine: Engine, services: ServicesDep) -> dict[str, Any]:
    registry = policyview.Registry.read(engine.directory)
    return {
        "policy_set_hash": engine.policy_set_hash,
        "reload_error": getattr(_reloader(services.policy), "last_error", None),
        "policies": policyview.agreements(engine),
        "elements": registry.elements,
        "purposes": registry.purposes,
        "principals": registry.principals,
    }


@router.get("/who-can")
def who_can(
    who: Officer,
    engine: Engine,
    data_element: Annotated[str, Query(min_length=3, max_length=200)],
    action: Annotated[str, Query(pattern="^(check|train|read_audit|administer)$")] = "check",
) -> dict[str, Any]:
    return policyview.who_can(engine, data_element, action)


@router.post("/explain")
def explain(body: Annotated[dict[str, Any], Body()], who: Officer, engine: Engine) -> dict[str, Any]:
    return policyview.explain(engine, policyview.build_requests(body))


def _reloader(policy: Any) -> Any:
    source = policy
    while hasattr(source, "engine") and not hasattr(source, "last_error"):
        source = source.engine
    return source
