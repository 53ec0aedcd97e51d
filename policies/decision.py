"""The policy decision point: Cedar (cedarpy) evaluation and the two places that call it.

- `PolicyEngine` holds one validated policy directory (read by policies/loader.py) as pre-parsed
  cedarpy handles reused for every decision (re-parsing text per call is what makes naive use
  slow). `decide` / `decide_all` fail closed: an unknown principal, purpose or resource, a policy
  evaluation error or any exception yields a denial with a reason, never an exception and never
  an allow.
- `CheckAuthorizer.authorize_check` is the gateway's decision before fan-out: the policy decision
  over the program and every element it reads, then the probing budget, then consent, then the
  tier's view. Budgets and consents are ports (policies/budgets.py and policies/consent.py
  implement them), so this module itself reads no file and opens no database.
- `node_decision` is what a data-owning node re-evaluates for its own elements (X-Road: the
  provider decides).

Explaining a decision and asking who can read an element is introspection (policies/introspect.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cedarpy

from policies import analysis
from policies.loader import DEFAULT_POLICY_DIR, LoadedDirectory, PolicyInfo, UserEntry, load_directory
from policies.tiers import View, view_for
from policies.types import (
    ACTIONS,
    NO_PERMIT,
    AccessRequest,
    BudgetRule,
    CheckContext,
    Decision,
    EpsilonReceipt,
    PolicyOutcome,
    PrivacySpend,
    check_requests,
    combine,
    node_requests,
    resource_ref,
)
from xgate.errors import ConfigError, InvalidInput, NotFound, PolicyDenied, StoreUnavailable, XgateError
from xgate.logging import get_logger
from xgate.principal import Principal

if TYPE_CHECKING:
    from policies.programs import Program  # typing only: programs pulls in crypto.he

__all__ = [
    "DEFAULT_POLICY_DIR",
    "FAIL_CLOSED",
    "ApprovalPort",
    "BudgetPort",
    "CheckAuthorizer",
    "ConsentPort",
    "EngineSource",
    "PolicyEngine",
    "Reservations",
    "current",
    "node_decision",
]

FAIL_CLOSED = "policy engine error (fail closed)"
log = get_logger("xgate.policies")
log_pdp = get_logger("xgate.policies.pdp")


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
    def silver_claim_days(self) -> int:
        return self._d.settings.tiers.silver_claim_days

    def cohort_epsilon(self, program: Program) -> tuple[float, float]:
        """Bronze: (eps per criterion and query, eps per agency, program and period); the program's own
        values win over policies/settings.toml [tiers]."""
        tiers, header = self._d.settings.tiers, program.header
        per_criterion = header.bronze_epsilon_per_criterion or tiers.bronze_epsilon_per_criterion
        return per_criterion, header.bronze_epsilon_per_period or tiers.bronze_epsilon_per_period

    @property
    def policies(self) -> tuple[PolicyInfo, ...]:
        return self._d.policies

    @property
    def purposes(self) -> tuple[str, ...]:
        return tuple(self._d.purposes)

    @property
    def users(self) -> tuple[UserEntry, ...]:
        """Every registered principal (principals.toml plus any added at load)."""
        return tuple(self._d.users.values())

    @property
    def require_signed_jobs(self) -> bool:
        """settings.toml [training]: every training job must carry its requester's signature."""
        return self._d.settings.training.require_signed_jobs

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
        if not self.resource_exists(kind, ident):
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

    def resource_exists(self, kind: str, ident: str) -> bool:
        known: dict[str, Any] = {
            "DataElement": self._d.elements,
            "Program": self._d.programs,
            "Dataset": self._d.datasets,
            "Node": set(_agencies(self._d)),
            "AuditLog": {"federation"},
        }
        return ident in known[kind]

    # -- facts for introspection (policies/introspect.py) ---------------------------------------
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

    @property
    def shapes(self) -> list[analysis.PolicyShape]:
        """Every policy's static shape (policies/analysis.py), in load order."""
        return list(self._shapes)


# -- the gateway's and the nodes' decision points -----------------------------------------------


class EngineSource(Protocol):
    """Something holding the policy version in force (policies/reload.py's PolicyReloader)."""

    @property
    def engine(self) -> PolicyEngine: ...


def current(source: PolicyEngine | EngineSource) -> PolicyEngine:
    """A PolicyEngine itself, or the version in force of a reloader."""
    return source if isinstance(source, PolicyEngine) else source.engine


class BudgetPort(Protocol):
    """The probing budget (policies/budgets.py ProbeBudget): refuses with BudgetExhausted.

    `reserve` counts the batch at once (atomic against concurrent callers) and returns a receipt
    whose `reservation` is then committed (answered) or released (failed).
    """

    def reserve(
        self, subjects: Sequence[str], program: str, agency: str, rule: BudgetRule, now: datetime | None = None
    ) -> Any: ...

    def commit(self, reservation: str) -> bool: ...

    def release(self, reservation: str) -> bool: ...


class ConsentPort(Protocol):
    """The consent registry (policies/consent.py ConsentRegistry): refuses with PolicyDenied."""

    def verify(
        self, ref: str, subject: str, agency: str, purpose: str, now: datetime, program: str | None = None
    ) -> None: ...

    def reserve(
        self,
        ref: str,
        subject: str,
        agency: str,
        purpose: str,
        now: datetime | None = None,
        program: str | None = None,
    ) -> str: ...

    def artefact(self, ref: str) -> str: ...

    def revoked(self, reservation: str) -> bool: ...

    def commit(self, reservation: str) -> bool: ...

    def release(self, reservation: str) -> bool: ...


class ApprovalPort(Protocol):
    """The approval registry (policies/approvals.py ApprovalRegistry): refuses with PolicyDenied."""

    def verify(
        self, ref: str, *, agency: str, program: str, case_id: str, subjects: Sequence[str], now: datetime
    ) -> None: ...

    def verify_training(
        self, ref: str, *, agency: str, datasets: Sequence[str], job_id: str, now: datetime
    ) -> None: ...

    def reserve(
        self, ref: str, *, agency: str, program: str, case_id: str, subjects: Sequence[str], now: datetime
    ) -> str: ...

    def artefact(self, ref: str) -> str: ...

    def revoked(self, reservation: str) -> bool: ...

    def commit(self, reservation: str) -> bool: ...

    def release(self, reservation: str) -> bool: ...


class PrivacyPort(Protocol):
    """The cohort view's ε budget (policies/budgets.py CohortPrivacyBudget): refuses with BudgetExhausted."""

    def reserve(
        self,
        program: str,
        agency: str,
        period: int,
        epsilon: float,
        cap: float,
        renews: tuple[float, float] | None = None,
    ) -> EpsilonReceipt: ...

    def commit(self, reservation: str) -> bool: ...

    def release(self, reservation: str) -> bool: ...


class ClaimPort(Protocol):
    """Silver claims (policies/silver_claims.py SilverClaims): refuses with PolicyDenied."""

    def reserve(
        self,
        subjects: Sequence[str],
        *,
        program: str,
        claim: str,
        overlaps: Sequence[str],
        agency: str,
        now: float,
        window_days: int,
    ) -> str: ...

    def commit(self, reservation: str) -> bool: ...

    def release(self, reservation: str) -> bool: ...


@dataclass
class Reservations:
    """A check's reserved probing budget, ε, silver claims, consent use and approval subjects
    (policies.types.Charge)."""

    budgets: BudgetPort | None = None
    budget_reservation: str = ""
    claims: ClaimPort | None = None
    claim_reservation: str = ""
    privacy: PrivacyPort | None = None
    privacy_reservation: str = ""
    consents: ConsentPort | None = None
    consent_reservation: str = ""
    approvals: ApprovalPort | None = None
    approval_reservation: str = ""

    def commit(self) -> None:
        """Charge the answer, or fail closed: every reservation must still be pending under its
        lease (a reaper gives back those of a gateway that died, and a commit after that must not
        let the answer out uncharged), and the consent and approval must not have been revoked
        meanwhile. On any failure everything still held is released and the error raised:
        PolicyDenied for a revocation, StoreUnavailable (retryable) for a lost reservation or a
        storage error.

        Order: a revocation is looked for first, before anything is charged; then the stores that
        can only fail for want of their lease or their database (budget, ε, silver claims); the
        consent and approval last, which decide on a revocation again under their locks. So a
        failure of any of the first keeps the subject's one-time consent and the approval's count
        unused (the retry can still be answered); only a revocation in the milliseconds between the
        look and the commits leaves the requester's own budget (and, if the consent's commit is what
        fails, the approval's count) charged for a withheld answer; the one-time consent commits last."""
        first = [
            (self.budgets, self.budget_reservation),
            (self.privacy, self.privacy_reservation),
            (self.claims, self.claim_reservation),
        ]
        # The approval before the consent: a consent's use is the one a withheld answer must not take.
        last = [(self.approvals, self.approval_reservation), (self.consents, self.consent_reservation)]
        try:
            self._refuse_if_revoked()
            for steps in (first, last):
                for port, reservation in steps:
                    if port is not None and reservation and not port.commit(reservation):
                        raise StoreUnavailable(
                            "the check's reservations ran out before it was answered (released by the reaper): "
                            "its answer is withheld; retry",
                            retry_after_s=1,
                        )
        except Exception as exc:  # any store's failure: released, and said as retryable
            self.release()
            if isinstance(exc, XgateError):
                raise
            raise StoreUnavailable(f"the check could not be charged ({type(exc).__name__}): retry") from None
        except BaseException:
            self.release()
            raise

    def _refuse_if_revoked(self) -> None:
        if self.consents is not None and self.consent_reservation and self.consents.revoked(self.consent_reservation):
            raise PolicyDenied(
                "consent refused: revoked by the data subject while the check ran; its answer is withheld"
            )
        if (
            self.approvals is not None
            and self.approval_reservation
            and self.approvals.revoked(self.approval_reservation)
        ):
            raise PolicyDenied("the approval was revoked by its approver while the check ran; its answer is withheld")

    def release(self) -> None:
        if self.approvals is not None and self.approval_reservation:
            self.approvals.release(self.approval_reservation)
        if self.consents is not None and self.consent_reservation:
            self.consents.release(self.consent_reservation)
        if self.claims is not None and self.claim_reservation:
            self.claims.release(self.claim_reservation)
        if self.budgets is not None and self.budget_reservation:
            self.budgets.release(self.budget_reservation)
        if self.privacy is not None and self.privacy_reservation:
            self.privacy.release(self.privacy_reservation)


@dataclass
class CheckAuthorizer:
    """The gateway's decision point for a check (implements exchange.service.CheckPolicy)."""

    engine: PolicyEngine | EngineSource
    budgets: BudgetPort | None = None
    consents: ConsentPort | None = None
    approvals: ApprovalPort | None = None
    privacy: PrivacyPort | None = None
    claims: ClaimPort | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def decide_check(
        self, principal: Principal, program: str, elements: Iterable[str], request: CheckContext, now: datetime
    ) -> Decision:
        """Policy only (no budget, no consent use): for previews and for tests."""
        engine = current(self.engine)
        registered = engine.principal(principal.user)
        if registered is not None and (registered.agency, registered.role, registered.tier) != (
            principal.agency,
            principal.role,
            principal.tier,
        ):
            return Decision(False, ("authenticated identity does not match the principals registry",),
                            policy_set_hash=engine.policy_set_hash)  # fmt: skip
        requests = check_requests(
            user=principal.user,
            agency=principal.agency,
            program=program,
            elements=elements,
            purpose=request.purpose,
            legal_basis=request.legal_basis,
            case_id=request.case_id,
            consent_ref=request.consent_ref,
            consent_valid=bool(request.consent_ref),  # verified (and consumed) below, after policy and budget
            approval_ref=request.approval_ref,
            at=now,
        )
        return engine.decide_all(requests)

    def authorize_check(self, principal: Principal, program: Program, request: CheckContext) -> PolicyOutcome:
        """exchange.service.CheckPolicy: raises PolicyDenied / BudgetExhausted, else the outcome."""
        now = self.clock()
        engine = current(self.engine)
        elements = [term.element for term in program.elements()]
        decision = self.decide_check(principal, program.id, elements, request, now)
        decision.raise_if_denied()
        view = view_for(principal.tier, len(request.pseudonyms), engine.min_cohort)
        if request.consent_ref:
            # Validate before reserving the probing budget: a refused request must not hold it.
            self._consent(request, principal.agency, now, program.id, consume=False)
        if request.approval_ref:
            self._approval(request, principal.agency, now, program.id, consume=False)
        # Read what the nodes are sent before reserving anything: a storage error here must find
        # nothing reserved (review: read after the reservations, it leaked every one of them).
        artefact = self.consents.artefact(request.consent_ref) if request.consent_ref and self.consents else ""
        approval = self.approvals.artefact(request.approval_ref) if request.approval_ref and self.approvals else ""
        charge = Reservations()
        try:
            spend = self._reserve(engine, principal, program, request, now, decision, view, charge)
        except BaseException:
            charge.release()  # any failure after the first reservation gives everything back
            raise
        log_pdp.info(
            "check_authorized",
            user=principal.user,
            program=program.id,
            subject_count=len(request.pseudonyms),
            view=view.value,
            policy_set_hash=decision.policy_set_hash,
        )
        return PolicyOutcome(
            view=view.value,
            policy_ids=decision.policy_ids,
            policy_set_hash=decision.policy_set_hash,
            charge=charge,
            consent_artefact=artefact,
            approval_artefact=approval,
            privacy=spend,
        )

    def release_owner(self, owner: str) -> int:
        """Give back whatever one owner (a dead attempt's Idempotency-Key claim) still holds in
        every store: called by the replica that takes the claim over. Returns how many."""
        released = 0
        for store in (self.approvals, self.consents, self.claims, self.budgets, self.privacy):
            release = getattr(store, "release_owner", None)
            if release is not None:
                released += int(release(owner))
        return released

    def _reserve(
        self,
        engine: PolicyEngine,
        principal: Principal,
        program: Program,
        request: CheckContext,
        now: datetime,
        decision: Decision,
        view: View,
        charge: Reservations,
    ) -> PrivacySpend | None:
        """Reserve the probing budget, silver claims, ε, the consent's use and the approval's
        subjects into `charge`; the caller releases it all if any step raises."""
        if self.budgets is not None and decision.budget is not None:
            receipt = self.budgets.reserve(request.pseudonyms, program.id, principal.agency, decision.budget, now)
            charge.budgets, charge.budget_reservation = self.budgets, str(receipt.reservation)
        # Every silver answer claims its subjects, overlapping programs or not: a program that comes
        # to share a question later (added, or a new version) must still find the claims.
        if view is View.OVERALL and (program.overlaps or self.claims is not None):
            self._claim(engine, request, program, principal.agency, now, charge)
        spend = None
        if view is View.COHORT:
            spend = self._epsilon(engine, program, principal.agency, now, charge)
        if request.consent_ref:
            charge.consent_reservation = self._consent(request, principal.agency, now, program.id)
            charge.consents = self.consents
        if request.approval_ref:
            charge.approval_reservation = self._approval(request, principal.agency, now, program.id)
            charge.approvals = self.approvals
        return spend

    def _claim(
        self,
        engine: PolicyEngine,
        request: CheckContext,
        program: Program,
        agency: str,
        now: datetime,
        charge: Reservations,
    ) -> None:
        """Silver: claim the subjects for this program, or refuse if a program sharing a question
        with it answered for any of them within the claim window. Without a claims store, a program
        that shares a question is refused (fail closed); others answer unclaimed."""
        if self.claims is None:
            raise PolicyDenied(
                f"this gateway keeps no silver claims: program '{program.id}' shares criteria with "
                f"{', '.join(repr(p) for p in program.overlaps)} and is refused at silver"
            )
        charge.claims = self.claims
        charge.claim_reservation = self.claims.reserve(
            request.pseudonyms,
            program=program.id,
            claim=program.claim_identity,
            overlaps=program.overlaps,
            agency=agency,
            now=now.timestamp(),
            window_days=engine.silver_claim_days,
        )

    def _epsilon(
        self, engine: PolicyEngine, program: Program, agency: str, now: datetime, charge: Reservations
    ) -> PrivacySpend:
        """Reserve this cohort query's ε (per criterion times criteria) in the period's budget."""
        per_criterion, cap = engine.cohort_epsilon(program)
        epsilon = per_criterion * len(program.criteria)
        period = int(now.timestamp() // program.epoch_seconds)  # the program's epoch (crypto.masks.epoch_of)
        if self.privacy is None:
            return PrivacySpend(per_criterion, epsilon, epsilon, cap, period)  # no ledger (tests, previews)
        renews = (now.timestamp(), float((period + 1) * program.epoch_seconds))
        receipt = self.privacy.reserve(program.id, agency, period, epsilon, cap, renews)
        charge.privacy, charge.privacy_reservation = self.privacy, receipt.reservation
        return PrivacySpend(per_criterion, epsilon, receipt.spent, cap, period)

    def _approval(self, request: CheckContext, agency: str, now: datetime, program: str, consume: bool = True) -> str:
        """Verify the approval (consume=False) or reserve its subjects (returns the reservation, '' if uncounted)."""
        if self.approvals is None:
            raise PolicyDenied("this gateway has no approval registry: checks naming an approval_ref are refused")
        ref, case_id, subjects = request.approval_ref, request.case_id, request.pseudonyms
        if consume:
            return self.approvals.reserve(
                ref, agency=agency, program=program, case_id=case_id, subjects=subjects, now=now
            )
        self.approvals.verify(ref, agency=agency, program=program, case_id=case_id, subjects=subjects, now=now)
        return ""

    def _consent(self, request: CheckContext, agency: str, now: datetime, program: str, consume: bool = True) -> str:
        """Verify the consent (consume=False) or reserve one use of it (returns the reservation)."""
        if self.consents is None:
            raise PolicyDenied("this gateway has no consent registry: consent-based checks are refused")
        if len(request.pseudonyms) != 1:
            raise PolicyDenied("a consent covers one subject: send consent-based checks one subject at a time")
        subject = request.pseudonyms[0]
        if consume:
            return self.consents.reserve(request.consent_ref, subject, agency, request.purpose, now, program=program)
        self.consents.verify(request.consent_ref, subject, agency, request.purpose, now, program=program)
        return ""


def node_decision(
    engine: PolicyEngine | EngineSource,
    *,
    node_agency: str,
    user: str,
    requesting_agency: str,
    program: str,
    elements: Iterable[str],
    purpose: str,
    legal_basis: str,
    case_id: str,
    consent_ref: str = "",
    approval_ref: str = "",
    at: datetime | None = None,
) -> Decision:
    """A node's own decision over the elements it holds (the elements of other agencies are ignored).

    Consent was verified and consumed by the gateway; the node treats a present consent_ref as
    valid (a node holding the registry can `ConsentRegistry.verify` it without consuming).
    """
    requests = check_requests(
        user=user,
        agency=requesting_agency,
        program=program,
        elements=elements,
        purpose=purpose,
        legal_basis=legal_basis,
        case_id=case_id,
        consent_ref=consent_ref,
        consent_valid=bool(consent_ref),
        approval_ref=approval_ref,
        at=at,
    )
    own = node_requests(node_agency, requests)
    engine_now = current(engine)
    if not own:
        reason = f"request reads no data element of '{node_agency}'"
        return Decision(False, (reason,), policy_set_hash=engine_now.policy_set_hash)
    return engine_now.decide_all(own)
