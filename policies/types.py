"""The policy decision point's vocabulary: requests in, decisions out (pure, no I/O).

Callers (gateway before fan-out, each node for its own elements) build `AccessRequest`s, hand
them to `PolicyEngine.decide` / `decide_all` (policies/decision.py), and act on `Decision.allowed`.
A decision names the policies that determined it and the hash of the policy set, so the audit
record can bind them. A whole check is authorised by `CheckAuthorizer.authorize_check`, which
reads a `CheckContext` and returns a `PolicyOutcome` (the view the caller may see).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from xgate.errors import InvalidInput, PolicyDenied

ACTIONS = ("check", "train", "read_audit", "administer")
RESOURCE_TYPES = ("Program", "DataElement", "Dataset", "AuditLog", "Node")
AUDIT_LOG = "AuditLog::federation"
NO_PERMIT = "no permit matched (deny by default)"


def resource_ref(text: str) -> tuple[str, str]:
    """'DataElement::tax.monthly_income' or 'DataElement::"tax.monthly_income"' -> (type, id)."""
    kind, sep, ident = text.partition("::")
    ident = ident.strip().strip('"')
    if not sep or kind not in RESOURCE_TYPES or not ident:
        raise InvalidInput(f"resource must look like Type::id with Type one of {', '.join(RESOURCE_TYPES)}")
    return kind, ident


@dataclass(frozen=True)
class AccessRequest:
    """One (principal, action, resource, context) question.

    principal: registered user id (policies/principals.toml); agency/role/tier come from there.
    resource: 'Type::id', e.g. 'DataElement::tax.monthly_income', 'Program::dibao'.
    requesting_agency: the agency the caller authenticated as; must equal the user's agency.
    at: aware datetime of the request (None: the engine's clock); hours are evaluated in the
    federation's local time zone (policies/settings.toml).
    consent_valid: set by the caller after checking consent_ref (policies/consent.py).
    """

    principal: str
    action: str
    resource: str
    purpose: str = ""
    legal_basis: str = ""
    case_id: str = ""
    consent_ref: str = ""
    consent_valid: bool = False
    approval_ref: str = ""
    program: str = ""
    requesting_agency: str = ""
    at: datetime | None = None

    def describe(self) -> str:
        return f"{self.principal} {self.action} {self.resource}"


@dataclass(frozen=True)
class BudgetRule:
    """A probing budget from an agreement: at most max_checks per subject per window_days."""

    max_checks: int
    window_days: int
    policy_id: str

    @property
    def window_seconds(self) -> int:
        return self.window_days * 86400


@dataclass(frozen=True)
class Decision:
    """allowed is True only when a permit matched, no forbid matched and nothing errored."""

    allowed: bool
    reasons: tuple[str, ...]
    errors: tuple[str, ...] = ()
    policy_set_hash: str = ""
    budget: BudgetRule | None = None
    items: tuple[Decision, ...] = field(default=(), repr=False)

    @property
    def policy_ids(self) -> tuple[str, ...]:
        """The policy ids among the reasons (what an audit record stores)."""
        return tuple(r for r in self.reasons if " " not in r)

    def raise_if_denied(self) -> None:
        if not self.allowed:
            raise PolicyDenied(
                "access denied: " + "; ".join(self.reasons),
                reasons=list(self.reasons),
                policy_set_hash=self.policy_set_hash,
            )


# Who holds the reservations a check makes (its Idempotency-Key claim's token, or a token of its
# own): set by the check service around the decision step, written by the stores into every
# reservation row, so a takeover of the claim releases what its dead attempt held (`release_owner`).
RESERVATION_OWNER: ContextVar[str] = ContextVar("xgate_reservation_owner", default="")
# How long a reservation stays pending before a reaper gives it back (the stores' default; the
# gateway sets the longest a check may take plus a margin, gateway/wiring.py). A check commits
# before it answers, and the commit of an expired reservation fails closed.
DEFAULT_LEASE_S = 300.0


class Charge(Protocol):
    """What a check holds of budgets and consent uses until it is answered (or fails).

    The decision point reserves before the fan-out; the check service commits when the check is
    answered and releases when it fails for any reason (the requester then learned nothing), so
    only answers are ever charged. Both are idempotent. `commit` fails closed: a reservation whose
    lease ran out (released by a reaper), or a consent / approval revoked meanwhile, raises, every
    reservation is released, and the answer is not delivered.
    """

    def commit(self) -> None: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class NoCharge:
    """Nothing reserved (no budget rule, no consent, or no decision point)."""

    def commit(self) -> None:
        return None

    def release(self) -> None:
        return None


DEFAULT_COHORT_EPSILON = 1.0  # bronze: eps per criterion and query (randomized response, exchange/cohort.py)
DEFAULT_COHORT_EPSILON_PER_PERIOD = 30.0  # bronze: eps per (requesting agency, program) per program epoch


@dataclass(frozen=True)
class EpsilonReceipt:
    """A cohort query's ε held in its period's budget (policies/budgets.py CohortPrivacyBudget)."""

    epsilon: float
    spent: float  # in the period, this reservation included
    cap: float
    period: int
    reservation: str


@dataclass(frozen=True)
class PrivacySpend:
    """What one cohort (bronze) query spends of its (requesting agency, program) privacy budget."""

    epsilon_per_criterion: float
    epsilon: float  # this query: epsilon_per_criterion times the number of criteria
    spent: float  # in this period, this query included
    cap: float  # per period
    period: int  # the program's epoch number the budget belongs to


@dataclass(frozen=True)
class PolicyOutcome:
    """What the gateway's policy decision point returned for a check."""

    view: str = "per_criterion"  # per_criterion | overall | cohort
    policy_ids: tuple[str, ...] = ()
    policy_set_hash: str = ""
    charge: Charge = field(default_factory=NoCharge)
    consent_artefact: str = ""  # the signed consent the nodes verify again (empty without consent)
    approval_artefact: str = ""  # the approver's signed approval the nodes verify again (empty without one)
    privacy: PrivacySpend | None = None  # cohort view: the epsilon reserved for this query


class CheckContext(Protocol):
    """What the decision point reads of one check request (the gateway's request model has these)."""

    @property
    def purpose(self) -> str: ...
    @property
    def legal_basis(self) -> str: ...
    @property
    def case_id(self) -> str: ...
    @property
    def consent_ref(self) -> str: ...
    @property
    def approval_ref(self) -> str: ...
    @property
    def pseudonyms(self) -> Sequence[str]: ...


def combine(decisions: Sequence[Decision], labels: Sequence[str], policy_set_hash: str) -> Decision:
    """All must allow. Reasons: permits when allowed; otherwise each denial, labelled by resource."""
    if not decisions:
        return Decision(False, ("empty request batch (deny by default)",), policy_set_hash=policy_set_hash)
    allowed = all(d.allowed for d in decisions)
    reasons: list[str] = []
    errors: list[str] = []
    for decision, label in zip(decisions, labels, strict=True):
        errors.extend(f"{label}: {e}" for e in decision.errors)
        if allowed:
            reasons.extend(r for r in decision.reasons if r not in reasons)
        elif not decision.allowed:
            reasons.extend(f"{label}: {r}" if " " in r else r for r in decision.reasons if r not in reasons)
    return Decision(
        allowed=allowed,
        reasons=tuple(reasons),
        errors=tuple(errors),
        policy_set_hash=policy_set_hash,
        budget=strictest(d.budget for d in decisions) if allowed else None,
        items=tuple(decisions),
    )


def strictest(rules: Iterable[BudgetRule | None]) -> BudgetRule | None:
    """Fewest checks over the longest window: at least as strict as every rule given."""
    present = [r for r in rules if r is not None]
    if not present:
        return None
    fewest = min(present, key=lambda r: r.max_checks)
    longest = max(r.window_days for r in present)
    return BudgetRule(fewest.max_checks, longest, fewest.policy_id)


def check_requests(
    *,
    user: str,
    agency: str,
    program: str,
    elements: Iterable[str],
    purpose: str,
    legal_basis: str,
    case_id: str,
    consent_ref: str = "",
    consent_valid: bool = False,
    approval_ref: str = "",
    at: datetime | None = None,
) -> list[AccessRequest]:
    """The requests one eligibility check needs: the program itself plus every element it reads.

    The gateway passes all of them to decide_all; a node passes only its own elements
    (`elements=[...]`, program kept for the context) — use node_requests for that.
    """
    common = {
        "principal": user,
        "action": "check",
        "purpose": purpose,
        "legal_basis": legal_basis,
        "case_id": case_id,
        "consent_ref": consent_ref,
        "consent_valid": consent_valid,
        "approval_ref": approval_ref,
        "program": program,
        "requesting_agency": agency,
        "at": at,
    }
    requests = [AccessRequest(resource=f"Program::{program}", **common)]  # type: ignore[arg-type]
    requests.extend(AccessRequest(resource=f"DataElement::{e}", **common) for e in elements)  # type: ignore[arg-type]
    return requests


def node_requests(node_agency: str, requests: Iterable[AccessRequest]) -> list[AccessRequest]:
    """The subset a data-owning node re-decides: its own data elements."""
    prefix = f"DataElement::{node_agency}."
    return [r for r in requests if r.resource.startswith(prefix)]
