"""The Policies page's data (pure over a PolicyEngine): agreements in force, who-can, explain.

Decisions are always Cedar's (engine.decide_all); this module only lays out the policy set's
introspection (policies.introspect, policies.analysis) as JSON for the browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from policies import introspect
from policies.analysis import purposes_of
from policies.decision import PolicyEngine
from policies.loader import ElementsFile, PurposesFile, UsersFile
from policies.types import ACTIONS, AccessRequest, resource_ref
from xgate.errors import ConfigError, InvalidInput
from xgate.tomlfile import load_model


@dataclass(frozen=True)
class Registry:
    """Names the forms offer (data elements, purposes, principals), read from the policy directory."""

    elements: list[dict[str, str]]
    purposes: list[dict[str, Any]]
    principals: list[dict[str, str]]

    @classmethod
    def read(cls, directory: Path) -> Registry:
        try:
            elements, _ = load_model(directory / "data_elements.toml", ElementsFile, "data elements")
            purposes, _ = load_model(directory / "purposes.toml", PurposesFile, "purposes")
            users, _ = load_model(directory / "principals.toml", UsersFile, "principals")
        except ConfigError:
            return cls([], [], [])
        return cls(
            [e.model_dump() for e in elements.elements],
            [p.model_dump() for p in purposes.purposes],
            [u.model_dump() for u in users.users],
        )


def _source(engine: PolicyEngine, file: str, line: int) -> str:
    try:
        return f"{Path(file).relative_to(engine.directory)}:{line}"
    except ValueError:
        return f"{Path(file).name}:{line}"


def agreements(engine: PolicyEngine) -> list[dict[str, Any]]:
    """Every policy in force: permits (one per agreement) and the baseline's forbids."""
    out = []
    for shape in engine.shapes:
        info = shape.info
        resource = "any"
        if shape.resource_id is not None:
            resource = f"{shape.resource_type}::{shape.resource_id}"
        elif shape.resource_type is not None:
            resource = f"any {shape.resource_type}"
        a = info.annotations
        budget = None
        if "budget_max_checks" in a:
            budget = {"max_checks": a["budget_max_checks"], "window_days": a.get("budget_window_days")}
        out.append(
            {
                "id": info.id,
                "effect": info.effect,
                "source": _source(engine, info.file, info.line),
                "agreement": a.get("agreement"),
                "provider": a.get("provider"),
                "consumer": a.get("consumer"),
                "description": a.get("description"),
                "actions": list(shape.actions or ACTIONS),
                "resource": resource,
                "principal": shape.constraints("principal"),
                "purposes": [str(v) for v in purposes_of(shape)],
                "conditions": [atom.text for atom in shape.atoms] + [f"unless {u}" for u in shape.unless],
                "budget": budget,
            }
        )
    return out


def who_can(engine: PolicyEngine, data_element: str, action: str) -> dict[str, Any]:
    grants = introspect.who_can(engine, data_element, action)
    forbids = introspect.restrictions(engine, data_element, action)
    return {
        "data_element": data_element,
        "action": action,
        "grants": [
            {
                "policy_id": g.policy_id,
                "source": g.source,
                "agreement": g.annotations.get("agreement"),
                "provider": g.annotations.get("provider"),
                "consumer": g.annotations.get("consumer"),
                "principal": g.principal,
                "actions": list(g.actions),
                "purposes": list(g.purposes),
                "conditions": list(g.conditions),
                "budget": {
                    "max_checks": g.annotations["budget_max_checks"],
                    "window_days": g.annotations.get("budget_window_days"),
                }
                if "budget_max_checks" in g.annotations
                else None,
                "registered_users": list(g.principals),
            }
            for g in grants
        ],
        "restrictions": [
            {
                "policy_id": f.info.id,
                "description": f.info.annotations.get("description", ""),
                "source": _source(engine, f.info.file, f.info.line),
            }
            for f in forbids
        ],
    }


_CONTEXT_FIELDS = ("purpose", "legal_basis", "case_id", "consent_ref", "approval_ref", "program")


def build_requests(body: dict[str, Any]) -> list[AccessRequest]:
    """Validate an explain body: principal, action, resources (1..20), context, optional 'at'."""
    principal, action = str(body.get("principal", "")), str(body.get("action", "check"))
    resources = body.get("resources") or ([body["resource"]] if body.get("resource") else [])
    if not principal:
        raise InvalidInput("principal is required")
    if action not in ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}")
    if not isinstance(resources, list) or not 1 <= len(resources) <= 20:
        raise InvalidInput("resources must list 1 to 20 resources such as DataElement::tax.monthly_income")
    for r in resources:
        resource_ref(str(r))  # InvalidInput names the accepted shapes
    context = body.get("context") or {}
    if not isinstance(context, dict):
        raise InvalidInput("context must be an object")
    unknown = sorted(set(context) - {*_CONTEXT_FIELDS, "at", "consent_valid"})
    if unknown:
        raise InvalidInput(f"unknown context keys: {', '.join(unknown)}")
    at = None
    if context.get("at"):
        try:
            at = datetime.fromisoformat(str(context["at"]).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput("context.at must be an ISO 8601 time with offset") from None
        if at.tzinfo is None:
            raise InvalidInput("context.at must carry a time zone offset")
    fields = {k: str(context.get(k) or "") for k in _CONTEXT_FIELDS}
    return [
        AccessRequest(
            principal=principal,
            action=action,
            resource=str(r),
            at=at,
            consent_valid=bool(context.get("consent_valid")),
            **fields,
        )
        for r in resources
    ]


def explain(engine: PolicyEngine, requests: list[AccessRequest]) -> dict[str, Any]:
    """Cedar's combined decision plus, per resource, every relevant policy with each condition's verdict."""
    combined = engine.decide_all(requests)
    items = []
    for request, decision in zip(requests, combined.items or (combined,), strict=False):
        items.append(
            {
                "resource": request.resource,
                "allowed": decision.allowed,
                "reasons": list(decision.reasons),
                "errors": list(decision.errors),
                "policies": _conditions(engine, request, decision.reasons),
                "text": introspect.explain(engine, request),
            }
        )
    user = engine.principal(requests[0].principal)
    return {
        "allowed": combined.allowed,
        "reasons": list(combined.reasons),
        "errors": list(combined.errors),
        "policy_set_hash": combined.policy_set_hash,
        "principal": user.model_dump() if user else None,
        "budget": None
        if combined.budget is None
        else {
            "max_checks": combined.budget.max_checks,
            "window_days": combined.budget.window_days,
            "policy_id": combined.budget.policy_id,
        },
        "items": items,
    }


def _conditions(engine: PolicyEngine, request: AccessRequest, reasons: tuple[str, ...]) -> list[dict[str, Any]]:
    try:
        kind, ident = resource_ref(request.resource)
        context = engine.context_of(request)
    except InvalidInput:
        return []
    env: dict[str, Any] = {f"context.{k}": v for k, v in context.items()}
    user = engine.principal(request.principal)
    if user is not None:
        env |= {"principal.agency": user.agency, "principal.role": user.role, "principal.tier": user.tier}
        env["context.requesting_agency"] = user.agency
    env |= {f"resource.{k}": v for k, v in engine.resource_attrs(kind, ident).items()}
    out = []
    for shape in engine.shapes:
        if not shape.applies_to(request.action, kind, ident):
            continue
        conds = []
        for atom in shape.atoms:
            verdict = atom.evaluate(env)
            actual = env.get(atom.path) if atom.path in env else None
            conds.append({"text": atom.text, "ok": verdict, "actual": None if verdict is not False else repr(actual)})
        out.append(
            {
                "id": shape.info.id,
                "effect": shape.info.effect,
                "source": _source(engine, shape.info.file, shape.info.line),
                "matched": shape.info.id in reasons,
                "conditions": conds,
            }
        )
    return out
