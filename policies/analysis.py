"""Static reading of Cedar policies (their JSON AST) for who-can and explain (pure).

Decisions are always made by Cedar; this module only *describes* policies: it flattens each
`when` clause into its conjuncts, recognises the shapes agreements use (attribute == literal,
[literals].contains(attribute), comparisons with a literal) and renders everything else as text.
An atom it cannot evaluate is reported as "?" rather than guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.loader import PolicyInfo

Expr = dict[str, Any]
_BINOPS = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "&&": "&&", "||": "||", "in": "in"}


def render(expr: Any) -> str:
    """Cedar-like text for an EST expression (for people, not for re-parsing)."""
    if not isinstance(expr, dict) or len(expr) != 1:
        return repr(expr)
    ((op, arg),) = expr.items()
    if op == "Value":
        if isinstance(arg, dict) and "__entity" in arg:
            return f'{arg["__entity"]["type"]}::"{arg["__entity"]["id"]}"'
        return f'"{arg}"' if isinstance(arg, str) else str(arg).lower() if isinstance(arg, bool) else str(arg)
    if op == "Var":
        return str(arg)
    if op == ".":
        return f"{render(arg['left'])}.{arg['attr']}"
    if op == "Set":
        return "[" + ", ".join(render(x) for x in arg) + "]"
    if op == "!":
        return f"!{render(arg['arg'])}"
    if op in _BINOPS:
        return f"{render(arg['left'])} {_BINOPS[op]} {render(arg['right'])}"
    if op in ("contains", "containsAll", "containsAny", "has", "like", "is"):
        right = arg.get("right", arg.get("attr", arg.get("pattern", arg.get("entity_type", ""))))
        return f"{render(arg['left'])}.{op}({render(right) if isinstance(right, dict) else right})"
    return f"{op}(...)"


def conjuncts(expr: Expr) -> list[Expr]:
    if isinstance(expr, dict) and "&&" in expr:
        return conjuncts(expr["&&"]["left"]) + conjuncts(expr["&&"]["right"])
    return [expr]


def _path(expr: Any) -> str | None:
    """'principal.tier' for principal.tier; None for anything that is not var.attr."""
    if isinstance(expr, dict) and "." in expr:
        left = expr["."]["left"]
        if isinstance(left, dict) and "Var" in left:
            return f"{left['Var']}.{expr['.']['attr']}"
    return None


def _literal(expr: Any) -> tuple[bool, Any]:
    if isinstance(expr, dict) and "Value" in expr and not isinstance(expr["Value"], dict):
        return True, expr["Value"]
    return False, None


def _literal_set(expr: Any) -> list[Any] | None:
    if isinstance(expr, dict) and "Set" in expr:
        items = [_literal(x) for x in expr["Set"]]
        if all(ok for ok, _ in items):
            return [v for _, v in items]
    return None


@dataclass(frozen=True)
class Atom:
    """One conjunct: `path op operand` when recognised, else path=None and only the text."""

    text: str
    path: str | None = None
    op: str = ""
    operand: Any = None

    def evaluate(self, env: Mapping[str, Any]) -> bool | None:
        if self.path is None or self.path not in env:
            return None
        actual = env[self.path]
        if self.op == "==":
            return bool(actual == self.operand)
        if self.op == "!=":
            return bool(actual != self.operand)
        if self.op == "one_of":
            return actual in self.operand
        if self.op == "truthy":
            return bool(actual)
        if self.op == "falsy":
            return not actual
        if isinstance(actual, int) and isinstance(self.operand, int):
            return {
                "<": actual < self.operand,
                "<=": actual <= self.operand,
                ">": actual > self.operand,
                ">=": actual >= self.operand,
            }.get(self.op)
        return None


def atom_of(expr: Expr) -> Atom:
    text = render(expr)
    if not (isinstance(expr, dict) and len(expr) == 1):
        return Atom(text)
    ((op, arg),) = expr.items()
    arg = arg if isinstance(arg, dict) else {}
    if op in ("==", "!=", "<", "<=", ">", ">="):
        path, (ok, value) = _path(arg["left"]), _literal(arg["right"])
        if path and ok:
            return Atom(text, path, op, value)
    if op == "contains":
        values, path = _literal_set(arg["left"]), _path(arg["right"])
        if values is not None and path:
            return Atom(text, path, "one_of", tuple(values))
    if op == ".":
        path = _path(expr)
        return Atom(text, path, "truthy") if path else Atom(text)
    if op == "!" and (path := _path(arg["arg"])):
        return Atom(text, path, "falsy")
    return Atom(text)


@dataclass(frozen=True)
class PolicyShape:
    info: PolicyInfo
    actions: tuple[str, ...] | None  # None: every action
    resource_op: str  # All | == | is | in
    resource_type: str | None
    resource_id: str | None
    atoms: tuple[Atom, ...]
    unless: tuple[str, ...] = field(default=())

    def applies_to(self, action: str, rtype: str, rid: str) -> bool:
        if self.actions is not None and action not in self.actions:
            return False
        if self.resource_type is not None and self.resource_type != rtype:
            return False
        return self.resource_id is None or self.resource_id == rid

    def constraints(self, prefix: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for atom in self.atoms:
            if atom.path and atom.path.startswith(prefix + "."):
                key = atom.path.split(".", 1)[1]
                if atom.op == "one_of":
                    shown = " | ".join(str(v) for v in atom.operand)
                elif atom.op == "==":
                    shown = str(atom.operand)
                else:
                    shown = atom.text
                out[key] = f"{out[key]} && {shown}" if key in out else shown
        return out


def shape_of(info: PolicyInfo) -> PolicyShape:
    est = info.est
    act = est["action"]
    actions: tuple[str, ...] | None = None
    if act["op"] == "==":
        actions = (act["entity"]["id"],)
    elif act["op"] == "in":
        entities = act.get("entities") or [act["entity"]]
        actions = tuple(e["id"] for e in entities)
    res = est["resource"]
    rtype: str | None = None
    rid: str | None = None
    if res["op"] == "==":
        rtype, rid = res["entity"]["type"], res["entity"]["id"]
    elif res["op"] == "is":
        rtype = res["entity_type"]
    atoms: list[Atom] = []
    unless: list[str] = []
    for cond in est.get("conditions", []):
        if cond["kind"] == "when":
            atoms.extend(atom_of(c) for c in conjuncts(cond["body"]))
        else:
            unless.append(render(cond["body"]))
    return PolicyShape(info, actions, res["op"], rtype, rid, tuple(atoms), tuple(unless))


@dataclass(frozen=True)
class Grant:
    """One answer of who_can: a permit that can release the element, and to whom."""

    policy_id: str
    principal: dict[str, str]
    actions: tuple[str, ...]
    purposes: tuple[str, ...]  # () means any registered purpose
    conditions: tuple[str, ...]
    principals: tuple[str, ...]  # registered users who satisfy the principal constraints
    source: str
    annotations: dict[str, str]


def purposes_of(shape: PolicyShape) -> tuple[str, ...]:
    for atom in shape.atoms:
        if atom.path == "context.purpose" and atom.op == "==":
            return (str(atom.operand),)
        if atom.path == "context.purpose" and atom.op == "one_of":
            return tuple(str(v) for v in atom.operand)
    return ()


def resource_matches(shape: PolicyShape, attrs: Mapping[str, Any]) -> bool:
    env = {f"resource.{k}": v for k, v in attrs.items()}
    return all(a.evaluate(env) is not False for a in shape.atoms if a.path and a.path.startswith("resource."))


def principal_matches(shape: PolicyShape, attrs: Mapping[str, Any]) -> bool:
    env = {f"principal.{k}": v for k, v in attrs.items()}
    principal_atoms = [a for a in shape.atoms if a.path and a.path.startswith("principal.")]
    return all(a.evaluate(env) is True for a in principal_atoms)
