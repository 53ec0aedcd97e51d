"""Human-readable explanation of one decision: inputs, verdict, and per-policy conjuncts (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from policies.types import AccessRequest, Decision, resource_ref
from xgate.errors import InvalidInput

if TYPE_CHECKING:
    from policies.engine import PolicyEngine

_MARK = {True: "ok  ", False: "FAIL", None: "?   "}


def explain(engine: PolicyEngine, request: AccessRequest, decision: Decision) -> str:
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
