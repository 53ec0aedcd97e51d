"""The policy decision point: Cedar (cedarpy) over a validated, pre-parsed policy directory.

Load once (`PolicyEngine.load`): schema, policies and entities are parsed into cedarpy handles
and reused for every decision (re-parsing text per call is what makes naive use slow). Decide
fails closed: an unknown principal, purpose or resource, a policy evaluation error or any
exception yields a denial with a reason, never an exception and never an allow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cedarpy

from policies import analysis
from policies.loader import LoadedDirectory, PolicyInfo, UserEntry, load_directory
from policies.types import (
    ACTIONS,
    NO_PERMIT,
    AccessRequest,
    BudgetRule,
    Decision,
    combine,
    resource_ref,
)
from xgate.errors import ConfigError, InvalidInput, NotFound
from xgate.logging import get_logger

DEFAULT_POLICY_DIR = Path(__file__).resolve().parent
FAIL_CLOSED = "policy engine error (fail closed)"
log = get_logger("xgate.policies")


@dataclass(frozen=True)
class _Prepared:
    cedar: dict[str, Any] | None  # None: denied before Cedar
    denial: str = ""


def _entities(d: LoadedDirectory) -> list[dict[str, Any]]:
    def ent(kind: str, ident: str, attrs: dict[str, Any]) -> dict[str, Any]:
        return {"uid": {"type": kind, "id": ident}, "attrs": attrs, "parents": []}

    out = [ent("User", u.id, {"agency": u.agency, "role": u.role, "tier": u.tier}) for u in d.users.values()]
    out += [
        ent("DataElement", e.id, {"agency": e.agency, "classification": e.classification}) for e in d.elements.values()
    ]
    out += [ent("Dataset", s.id, {"agency": s.agency, "classification": s.classification}) for s in d.datasets.values()]
    out += [
        ent("Program", p.id, {"requester_agencies": list(p.requester_agencies), "purposes": list(p.purposes)})
        for p in d.programs.values()
    ]
    out += [ent("Node", a, {"agency": a}) for a in _agencies(d)]
    out.append(ent("AuditLog", "federation", {}))
    return out


def _agencies(d: LoadedDirectory) -> list[str]:
    return sorted({e.agency for e in d.elements.values()} | {u.agency for u in d.users.values()})


def _scope_may_match(shape: analysis.PolicyShape, action: str, kind: str, ident: str) -> bool:
    act = shape.info.est["action"]
    if act["op"] == "==" and act["entity"]["id"] != action:
        return False  # `in` scopes stay: an action group could contain this action
    res = shape.info.est["resource"]
    if res["op"] == "==":
        return bool(res["entity"] == {"type": kind, "id": ident})
    if res["op"] == "is":
        return bool(res["entity_type"] == kind)
    return True  # All, in: keep


def _purpose_may_match(shape: analysis.PolicyShape, purpose: str) -> bool:
    if shape.unless:
        return True  # keep it simple: never drop a policy with an `unless` clause
    for atom in shape.atoms:
        if atom.path is None:
            return True  # an unrecognised conjunct might raise: keep the policy so the error shows
        if atom.path == "context.purpose":
            if atom.op == "==":
                return bool(atom.operand == purpose)
            if atom.op == "one_of":
                return purpose in atom.operand
    return True


def _budget_of(info: PolicyInfo) -> BudgetRule | None:
    raw_max, raw_days = info.annotations.get("budget_max_checks"), info.annotations.get("budget_window_days")
    if raw_max is None and raw_days is None:
        return None
    try:
        rule = BudgetRule(int(raw_max or ""), int(raw_days or ""), info.id)
    except ValueError:
        rule = BudgetRule(0, 0, info.id)
    if not (1 <= rule.max_checks <= 1_000_000 and 1 <= rule.window_days <= 3660):
        raise ConfigError(
            f"policy file {info.file}: line {info.line}: @budget_max_checks and @budget_window_days must both be "
            "positive integers",
            file=info.file,
            line=info.line,
        )
    return rule


class PolicyEngine:
    def __init__(self, loaded: LoadedDirectory, clock: Callable[[], datetime] | None = None) -> None:
        self._d = loaded
        self._clock = clock or (lambda: datetime.now(UTC))
        try:
            self.timezone = ZoneInfo(loaded.settings.engine.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"settings: unknown time zone '{loaded.settings.engine.timezone}'") from exc
        try:
            self._entities = cedarpy.Entities.from_json_str(json.dumps(_entities(loaded)), loaded.schema)
        except ValueError as exc:
            raise ConfigError(f"policy directory {loaded.root}: entities do not match the schema: {exc}") from exc
        self._budgets = {i.id: b for i in loaded.policies if (b := _budget_of(i)) is not None}
        self._shapes = [analysis.shape_of(i) for i in loaded.policies]
        self._slices: dict[tuple[str, str, str, str], cedarpy.PolicySet] = {}

    def _slice(self, action: str, kind: str, ident: str, purpose: str) -> cedarpy.PolicySet:
        """The policies that can match (action, resource, purpose); same decisions, far less to evaluate.

        Cedar evaluates every policy in the set for every request. A policy whose scope pins another
        action or resource cannot apply (entities here have no parents), nor can one whose `when`
        requires another purpose before any conjunct that could raise an error, so both are left
        out; everything else stays. Built on first use and cached (keys are registered values only).
        """
        key = (action, kind, ident, purpose)
        cached = self._slices.get(key)
        if cached is None:
            keep = {
                s.info.id: s.info.est
                for s in self._shapes
                if _scope_may_match(s, action, kind, ident) and _purpose_may_match(s, purpose)
            }
            text = json.dumps({"staticPolicies": keep, "templates": {}, "templateLinks": []})
            cached = self._slices[key] = cedarpy.PolicySet.from_json_str(text)
        return cached

    @classmethod
    def load(
        cls,
        directory: Path = DEFAULT_POLICY_DIR,
        clock: Callable[[], datetime] | None = None,
        principals: Iterable[UserEntry] = (),
    ) -> PolicyEngine:
        """Validate and load a policy directory; raises ConfigError naming file and line.

        `principals` adds users from another registry (e.g. the gateway's users file); a user also in
        principals.toml must carry the same agency, role and tier, or loading fails.
        """
        loaded = load_directory(Path(directory))
        extra = sorted(principals, key=lambda u: u.id)
        if not extra:
            return cls(loaded, clock)
        users = dict(loaded.users)
        for user in extra:
            if user.id in users and users[user.id] != user:
                raise ConfigError(f"principal '{user.id}' differs from its entry in principals.toml")
            users[user.id] = user
        # Extra principals change decisions, so they are part of the policy-set hash.
        canonical = json.dumps([u.model_dump() for u in extra], sort_keys=True).encode()
        digest = hashlib.sha256(loaded.sha256.encode() + b"\0" + canonical).hexdigest()
        return cls(dataclasses.replace(loaded, users=users, sha256=digest), clock)

    # -- facts other modules need -------------------------------------------------------------
    @property
    def policy_set_hash(self) -> str:
        return self._d.sha256

    @property
    def directory(self) -> Path:
        return self._d.root

    @property
    def min_cohort(self) -> int:
        return self._d.settings.tiers.min_cohort

    @property
    def policies(self) -> tuple[PolicyInfo, ...]:
        return self._d.policies

    @property
    def purposes(self) -> tuple[str, ...]:
        return tuple(self._d.purposes)

    def principal(self, user: str) -> UserEntry | None:
        return self._d.users.get(user)

    def epsilon_cap(self, dataset: str) -> float:
        if dataset not in self._d.datasets:
            raise NotFound(f"dataset '{dataset}' is not registered")
        return self._d.datasets[dataset].epsilon_cap

    def training_datasets(self, elements: Iterable[str]) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
        """(registered dataset -> those of `elements` it holds, elements no registered dataset holds)."""
        owner = {e: d.id for d in self._d.datasets.values() for e in d.elements}
        covered: dict[str, list[str]] = {}
        unmapped: list[str] = []
        for element in dict.fromkeys(elements):
            if element in owner:
                covered.setdefault(owner[element], []).append(element)
            else:
                unmapped.append(element)
        return {d: tuple(es) for d, es in sorted(covered.items())}, tuple(unmapped)

    # -- decisions ------------------------------------------------------------------------------
    def decide(self, request: AccessRequest) -> Decision:
        return self.decide_all([request]).items[0]

    def decide_all(self, requests: Sequence[AccessRequest]) -> Decision:
        """Every request must be allowed. One Cedar batch call; fails closed on any error."""
        labels = [r.resource for r in requests]
        try:
            prepared = [self._prepare(r) for r in requests]
            groups: dict[tuple[str, str, str, str], list[int]] = {}
            for index, p in enumerate(prepared):
                if p.cedar is not None:
                    c = p.cedar
                    key = (c["action"]["id"], c["resource"]["type"], c["resource"]["id"], c["context"]["purpose"])
                    groups.setdefault(key, []).append(index)
            results: dict[int, cedarpy.AuthzResult] = {}
            for key, indices in groups.items():  # one Cedar batch call per resource
                batch = [prepared[i].cedar for i in indices]
                answers = cedarpy.is_authorized_batch(batch, self._slice(*key), self._entities)  # type: ignore[arg-type]
                results.update(zip(indices, answers, strict=True))
            decisions = [
                self._decision(results[i]) if p.cedar is not None else self._deny(p.denial)
                for i, p in enumerate(prepared)
            ]
        except Exception as exc:  # noqa: BLE001 # fail closed, whatever broke
            log.warning("policy_engine_error", error=type(exc).__name__, policy_set_hash=self.policy_set_hash)
            decisions = [self._deny(FAIL_CLOSED, f"{type(exc).__name__}: {exc}") for _ in requests]
        combined = combine(decisions, labels, self.policy_set_hash)
        if not combined.allowed:
            log.info("policy_denied", requests=len(requests), reasons=list(combined.reasons)[:5])
        return combined

    def _deny(self, reason: str, error: str = "") -> Decision:
        return Decision(False, (reason,), (error,) if error else (), self.policy_set_hash)

    def _decision(self, result: cedarpy.AuthzResult) -> Decision:
        ids = tuple(result.diagnostics.reasons)
        errors = tuple(result.diagnostics.errors)
        if errors:  # Cedar skips an erroring policy; an erroring forbid must not turn into an allow
            return Decision(False, ("policy evaluation error (fail closed)", *ids), errors, self.policy_set_hash)
        if result.allowed:
            budgets = [self._budgets[i] for i in ids if i in self._budgets]
            budget = min(budgets, key=lambda b: b.max_checks) if budgets else None
            return Decision(True, ids, (), self.policy_set_hash, budget)
        return Decision(False, ids or (NO_PERMIT,), (), self.policy_set_hash)

    def context_of(self, request: AccessRequest) -> dict[str, Any]:
        at = request.at if request.at is not None else self._clock()
        if at.tzinfo is None:
            raise InvalidInput("request time has no time zone")
        local = at.astimezone(self.timezone)
        purpose = self._d.purposes.get(request.purpose)
        return {
            "purpose": request.purpose,
            "consent_required": bool(purpose and purpose.consent_required),
            "legal_basis": request.legal_basis,
            "case_id": request.case_id,
            "consent_ref": request.consent_ref,
            "consent_valid": bool(request.consent_valid and request.consent_ref),
            "approval_ref": request.approval_ref,
            "hour": local.hour,
            "weekday": local.isoweekday(),
            "requesting_agency": request.requesting_agency or "",
            "program": request.program,
        }

    def _prepare(self, request: AccessRequest) -> _Prepared:
        if request.action not in ACTIONS:
            return _Prepared(None, f"unknown action '{request.action}'")
        try:
            kind, ident = resource_ref(request.resource)
        except InvalidInput as exc:
            return _Prepared(None, exc.message)
        user = self._d.users.get(request.principal)
        if user is None:
            return _Prepared(None, "unknown principal (not in the principals registry)")
        if request.requesting_agency and request.requesting_agency != user.agency:
            return _Prepared(None, "requesting agency does not match the principal's registered agency")
        if request.purpose not in self._d.purposes:
            return _Prepared(None, f"purpose '{request.purpose}' is not registered")
        if not self._resource_exists(kind, ident):
            return _Prepared(None, f"unknown resource {kind}::{ident}")
        if request.program and request.program not in self._d.programs:
            return _Prepared(None, f"unknown program '{request.program}'")
        context = self.context_of(request)
        context["requesting_agency"] = user.agency
        return _Prepared(
            {
                "principal": {"type": "User", "id": user.id},
                "action": {"type": "Action", "id": request.action},
                "resource": {"type": kind, "id": ident},
                "context": context,
            }
        )

    def _resource_exists(self, kind: str, ident: str) -> bool:
        known: dict[str, Any] = {
            "DataElement": self._d.elements,
            "Program": self._d.programs,
            "Dataset": self._d.datasets,
            "Node": set(_agencies(self._d)),
            "AuditLog": {"federation"},
        }
        return ident in known[kind]

    # -- analysis -------------------------------------------------------------------------------
    def resource_attrs(self, kind: str, ident: str) -> dict[str, Any]:
        if kind == "DataElement" and ident in self._d.elements:
            e = self._d.elements[ident]
            return {"agency": e.agency, "classification": e.classification}
        if kind == "Dataset" and ident in self._d.datasets:
            s = self._d.datasets[ident]
            return {"agency": s.agency, "classification": s.classification}
        if kind == "Node":
            return {"agency": ident}
        return {}

    def who_can(self, data_element: str, action: str = "check") -> list[analysis.Grant]:
        """Every permit that can release `data_element`, its principal constraints, purposes and
        the registered users who satisfy them. Forbids still apply: see restrictions()."""
        kind, ident = resource_ref(data_element if "::" in data_element else f"DataElement::{data_element}")
        if not self._resource_exists(kind, ident):
            raise NotFound(f"{kind} '{ident}' is not registered")
        attrs = self.resource_attrs(kind, ident)
        grants = []
        for shape in self._shapes:
            if shape.info.effect != "permit" or not shape.applies_to(action, kind, ident):
                continue
            if not analysis.resource_matches(shape, attrs):
                continue
            users = tuple(
                u.id
                for u in self._d.users.values()
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
                    source=f"{Path(shape.info.file).relative_to(self._d.root)}:{shape.info.line}",
                    annotations=shape.info.annotations,
                )
            )
        return grants

    def restrictions(self, resource: str, action: str = "check") -> list[analysis.PolicyShape]:
        """The forbids that can apply to `resource` (e.g. core data without approval)."""
        kind, ident = resource_ref(resource if "::" in resource else f"DataElement::{resource}")
        attrs = self.resource_attrs(kind, ident)
        return [
            s
            for s in self._shapes
            if s.info.effect == "forbid" and s.applies_to(action, kind, ident) and analysis.resource_matches(s, attrs)
        ]

    def explain(self, request: AccessRequest) -> str:
        from policies.explain import explain

        return explain(self, request, self.decide(request))

    @property
    def shapes(self) -> list[analysis.PolicyShape]:
        return list(self._shapes)
