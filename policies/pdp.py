"""The two decision points, ready to call: the gateway before fan-out, each node for its own data.

`CheckAuthorizer.authorize_check` implements gateway.checks.CheckPolicy: policy decision over
the program and every element it reads, then the probing budget, then consent, then the tier's
view. `node_decision` is what a data-owning node re-evaluates (X-Road: the provider decides).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from policies.budgets import ProbeBudget
from policies.consent import ConsentRegistry, evaluate
from policies.tiers import view_for
from policies.types import Decision, check_requests, node_requests
from xgate.errors import NotFound, PolicyDenied
from xgate.logging import get_logger
from xgate.principal import Principal

if TYPE_CHECKING:
    from gateway.checks import PolicyOutcome
    from policies.engine import PolicyEngine

log = get_logger("xgate.policies.pdp")


def _engine(source: Any) -> PolicyEngine:
    """A PolicyEngine, or the version in force of a PolicyReloader."""
    return source.engine if hasattr(source, "engine") else source  # type: ignore[no-any-return]


@dataclass
class CheckAuthorizer:
    engine: Any  # PolicyEngine | PolicyReloader
    budgets: ProbeBudget | None = None
    consents: ConsentRegistry | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def decide_check(
        self, principal: Principal, program: str, elements: Iterable[str], request: Any, now: datetime
    ) -> Decision:
        """Policy only (no budget, no consent use): for previews and for tests."""
        engine = _engine(self.engine)
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

    def authorize_check(self, principal: Principal, program: Any, request: Any) -> PolicyOutcome:
        """gateway.checks.CheckPolicy: raises PolicyDenied / BudgetExhausted, else the outcome."""
        from gateway.checks import PolicyOutcome

        now = self.clock()
        engine = _engine(self.engine)
        elements = [term.element for term in program.elements()]
        decision = self.decide_check(principal, program.id, elements, request, now)
        decision.raise_if_denied()
        view = view_for(principal.tier, len(request.pseudonyms), engine.min_cohort)
        if request.consent_ref:
            # Validate before spending the probing budget: a refused request must not burn it.
            self._consent(request, principal.agency, now, consume=False)
        if self.budgets is not None and decision.budget is not None:
            self.budgets.consume(request.pseudonyms, program.id, principal.agency, decision.budget, now)
        if request.consent_ref:
            self._consent(request, principal.agency, now)
        log.info(
            "check_authorized",
            user=principal.user,
            program=program.id,
            subjects=len(request.pseudonyms),
            view=view.value,
            policy_set_hash=decision.policy_set_hash,
        )
        return PolicyOutcome(view=view.value, policy_ids=decision.policy_ids, policy_set_hash=decision.policy_set_hash)

    def _consent(self, request: Any, agency: str, now: datetime, consume: bool = True) -> None:
        if self.consents is None:
            raise PolicyDenied("this gateway has no consent registry: consent-based checks are refused")
        if len(request.pseudonyms) != 1:
            raise PolicyDenied("a consent covers one subject: send consent-based checks one subject at a time")
        if consume:
            self.consents.check(request.consent_ref, request.pseudonyms[0], agency, request.purpose, now)
            return
        try:
            record = self.consents.lookup(request.consent_ref)
        except NotFound:
            record = None
        evaluate(record, request.pseudonyms[0], agency, request.purpose, now)


def node_decision(
    engine: Any,
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
    valid (a node holding the registry can `lookup` + `consent.evaluate` it without consuming).
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
    current = _engine(engine)
    if not own:
        reason = f"request reads no data element of '{node_agency}'"
        return Decision(False, (reason,), policy_set_hash=current.policy_set_hash)
    return current.decide_all(own)
