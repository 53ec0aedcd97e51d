"""Introspection of a policy set (pure): explain one decision, who can read an element, what restricts it.

Decisions are always Cedar's (policies/decision.py); this module reads the engine's facts and the
static shapes of its policies (policies/analysis.py) to describe them for people: `explain` shows a
request's inputs, the verdict and every relevant policy's conditions ok/FAIL; `who_can` lists the
permits that can release a data element and the registered users they cover; `restrictions` lists
the forbids that can apply to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policies import analysis
from policies.decision import PolicyEngine
from policies.types import ACTIONS, AccessRequest, Decision, resource_ref
from xgate.errors import InvalidInput, NotFound

_MARK = {True: "ok  ", False: "FAIL", None: "?   "}


def _ref(resource: str) -> tuple[str, str]:
    """'tax.monthly_income' means DataElement::tax.monthly_income; 'Type::id' is taken as written."""
    return resource_ref(resource if "::" in resource else f"DataElement::{resource}")


def who_can(engine: PolicyEngine, data_element: str, action: str = "check") -> list[analysis.Grant]:
    """Every permit that can release `data_element`, its principal constraints, purposes and
    the registered users who satisfy them. Forbids still apply: see restrictions()."""
    if action not in ACTIONS:  # "nobody may fly" was answered as if it were a finding
        raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}, not '{action[:32]}'")
    kind, ident = _ref(data_element)
    if not engine.resource_exists(kind, ident):
        raise NotFound(f"{kind} '{ident}' is not registered")
    attrs = engine.resource_attrs(kind, ident)
    grants = []
    for shape in engine.shapes:
        if shape.info.effect != "permit" or not shape.applies_to(action, kind, ident):
            continue
        if not analysis.resource_matches(shape, attrs):
            continue
        users = tuple(
            u.id
            for u in engine.users
            if analysis.principal_matches(shape, {"agency": u.agency, "role": u.role, "tier": u.tier})
        )
        others = tuple(
            a.text
            for a in shape.atoms
            if not (a.path or "").startswith(("principal.", "resource.")) and a.path != "context.purpose"
        )
        grants.append(
            analysis.Grant(
                policy_id=shape.info.id,
                principal=shape.constraints("principal"),
                actions=shape.actions or ACTIONS,
                purposes=analysis.purposes_of(shape),
                conditions=others + tuple(f"unless {u}" for u in shape.unless),
                principals=users,
                source=f"{Path(shape.info.file).relative_to(engine.directory)}:{shape.info.line}",
                annotations=shape.info.annotations,
            )
        )
    return grants


def restrictions(engine: PolicyEngine, resource: str, action: str = "check") -> list[analysis.PolicyShape]:
    """The forbids that can apply to `resource` (e.g. core data without approval)."""
    kind, ident = _ref(resource)
    attrs = engine.resource_attrs(kind, ident)
    return [
        s
        for s in engine.shapes
        if s.info.effect == "forbid" and s.applies_to(action, kind, ident) and analysis.resource_matches(s, attrs)
    ]


def explain(engine: PolicyEngine, request: AccessRequest, decision: Decision | None = None) -> str:
    """The decision on `request` (decided now unless given) and why, as text for people."""
    if decision is None:
        decision = engine.decide(request)
    lines = [f"request:  {request.describe()}"]
    user = engine.principal(request.principal)
    if user is None:
        lines.append("principal: NOT REGISTERED")
    else:
        lines.append(f"principal: agency={user.agency} role={user.role} tier={user.tier}")
    env: dict[str, Any] = {}
    try:
        context = engine.context_of(request)
        kind, ident = resource_ref(request.resource)
    except InvalidInput as exc:
        lines.append(f"context:  unusable ({exc.message})")
        context, kind, ident = {}, "", ""
    if context:
        shown = {k: v for k, v in context.items() if v not in ("", False) or k == "consent_valid"}
        lines.append("context:  " + " ".join(f"{k}={v}" for k, v in shown.items()) + f" (tz {engine.timezone.key})")
        env.update({f"context.{k}": v for k, v in context.items()})
    if user is not None:
        env.update({"principal.agency": user.agency, "principal.role": user.role, "principal.tier": user.tier})
        env["context.requesting_agency"] = user.agency
    env.update({f"resource.{k}": v for k, v in engine.resource_attrs(kind, ident).items()})

    lines.append(f"decision: {'ALLOW' if decision.allowed else 'DENY'}")
    lines += [f"  reason: {r}" for r in decision.reasons]
    lines += [f"  error:  {e}" for e in decision.errors]
    if decision.budget:
        b = decision.budget
        lines.append(f"  budget: {b.max_checks} per subject per {b.window_days} days (from {b.policy_id})")
    lines.append(f"policy set: {decision.policy_set_hash}")

    relevant = [s for s in engine.shapes if kind and s.applies_to(request.action, kind, ident)]
    if not relevant:
        lines.append(f"no policy mentions action '{request.action}' on {request.resource}")
    for effect in ("permit", "forbid"):
        group = [s for s in relevant if s.info.effect == effect]
        if group:
            lines.append(f"{effect}s for this action and resource:")
        for shape in group:
            src = f"{Path(shape.info.file).relative_to(engine.directory)}:{shape.info.line}"
            matched = "MATCHED" if shape.info.id in decision.reasons else "not matched"
            lines.append(f"  {shape.info.id} ({src}) {matched}")
            for atom in shape.atoms:
                verdict = atom.evaluate(env)
                actual = f"   [{atom.path} = {env[atom.path]!r}]" if verdict is False and atom.path in env else ""
                lines.append(f"    {_MARK[verdict]} {atom.text}{actual}")
    return "\n".join(lines)
