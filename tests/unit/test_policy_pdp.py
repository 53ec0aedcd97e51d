"""The gateway's decision point end to end: policy, tier view, probing budget, consent; and the node's."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.models import CheckRequest
from policies.budgets import ProbeBudget
from policies.consent import ConsentRegistry
from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine, node_decision
from tests.unit.test_approvals import STANDING_REF, standing_registry
from tests.unit.test_budgets import pseudo
from tests.unit.test_policy_support import DAYTIME, DIBAO_ELEMENTS
from xgate.errors import BudgetExhausted, PolicyDenied
from xgate.principal import Principal


class _Term:
    def __init__(self, element: str) -> None:
        self.element = element


class _Program:
    def __init__(self, pid: str, elements: list[str]) -> None:
        from types import SimpleNamespace

        self.id = pid
        self._elements = elements
        # what the cohort view's epsilon reservation reads: no program overrides, one criterion per element
        self.header = SimpleNamespace(bronze_epsilon_per_criterion=None, bronze_epsilon_per_period=None)
        self.criteria = elements
        self.epoch_seconds = 30 * 86400
        self.overlaps: tuple[str, ...] = ()  # shares no question with another program (no silver claim)

    def elements(self) -> list[_Term]:
        return [_Term(e) for e in self._elements]


DIBAO = _Program("dibao", DIBAO_ELEMENTS)
INCOME_ONLY = _Program("dibao", ["tax.monthly_income", "hrss.monthly_pension"])
GOLD = Principal("ca-caseworker-gold", "civil_affairs", "caseworker", "gold")
BRONZE = Principal("ca-caseworker-bronze", "civil_affairs", "caseworker", "bronze")


def _request(n: int = 3, **kw: object) -> CheckRequest:
    fields: dict[str, object] = dict(
        program="dibao",
        purpose="dibao",
        legal_basis="SAR-2014-art-12",
        case_id="C-1",
        approval_ref=STANDING_REF,
        mode="plaintext",
        pseudonyms=[pseudo(i) for i in range(n)],
    )
    fields.update(kw)
    return CheckRequest(**fields)  # type: ignore[arg-type]


APPROVALS = standing_registry(Path(tempfile.mkdtemp(prefix="xgate-pdp-")) / "approvals.db")


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.load(DEFAULT_POLICY_DIR)


def test_gold_caseworker_gets_per_criterion_view_and_budget_is_charged(engine: PolicyEngine, tmp_path: Path) -> None:
    budget = ProbeBudget(tmp_path / "b.db")
    pdp = CheckAuthorizer(engine, budgets=budget, approvals=APPROVALS, clock=lambda: DAYTIME)
    outcome = pdp.authorize_check(GOLD, DIBAO, _request())
    assert outcome.view == "per_criterion"
    assert "dibao-household-alive-resident" in outcome.policy_ids
    assert outcome.policy_set_hash == engine.policy_set_hash
    pdp.authorize_check(GOLD, DIBAO, _request())
    pdp.authorize_check(GOLD, DIBAO, _request())
    with pytest.raises(BudgetExhausted) as err:  # 3 per applicant per 30 days
        pdp.authorize_check(GOLD, DIBAO, _request())
    assert err.value.details["over_subjects"] == 3


def test_denials(engine: PolicyEngine) -> None:
    pdp = CheckAuthorizer(engine, approvals=APPROVALS, clock=lambda: DAYTIME)
    with pytest.raises(PolicyDenied, match="baseline-core-needs-approval"):
        pdp.authorize_check(GOLD, DIBAO, _request(approval_ref=""))
    with pytest.raises(PolicyDenied, match="no permit matched"):
        pdp.authorize_check(BRONZE, INCOME_ONLY, _request(n=20))  # bronze is below the agreement's tiers
    forged = Principal("ca-caseworker-bronze", "civil_affairs", "caseworker", "gold")
    with pytest.raises(PolicyDenied, match="does not match the principals registry"):
        pdp.authorize_check(forged, INCOME_ONLY, _request())
    stranger = Principal("nobody", "civil_affairs", "caseworker", "gold")
    with pytest.raises(PolicyDenied, match="unknown principal"):
        pdp.authorize_check(stranger, INCOME_ONLY, _request())


def test_silver_overall_and_bronze_cohort_rules(engine: PolicyEngine, tmp_path: Path) -> None:
    # A policy set where bronze caseworkers may run the income part, to exercise the cohort minimum.
    from tests.unit.test_policy_support import copy_policies

    root = copy_policies(tmp_path / "p")
    for name in ("dibao-tax-monthly-income.cedar", "dibao-hrss-monthly-pension.cedar"):
        f = root / "agreements" / name
        f.write_text(f.read_text().replace('["gold", "silver"]', '["gold", "silver", "bronze"]'))
    pdp = CheckAuthorizer(PolicyEngine.load(root), approvals=APPROVALS, clock=lambda: DAYTIME)
    silver = Principal("ca-caseworker-silver", "civil_affairs", "caseworker", "silver")
    assert pdp.authorize_check(silver, INCOME_ONLY, _request()).view == "overall"
    assert pdp.authorize_check(BRONZE, INCOME_ONLY, _request(n=10)).view == "cohort"
    with pytest.raises(PolicyDenied, match="minimum cohort"):
        pdp.authorize_check(BRONZE, INCOME_ONLY, _request(n=9))


def test_consent_based_check(engine: PolicyEngine, tmp_path: Path) -> None:
    consents = ConsentRegistry(tmp_path / "c.db")
    pdp = CheckAuthorizer(engine, consents=consents, approvals=APPROVALS, clock=lambda: DAYTIME)
    program = _Program("dibao", ["tax.monthly_income"])  # the program-level permit needs a program id
    subject = pseudo(0)  # the subject _request(n=1) sends
    base = dict(purpose="income_certificate", legal_basis="PIPL-2021-art-13-1", approval_ref="", n=1)

    def req(**kw: object) -> CheckRequest:
        merged = {**base, **kw}
        n = int(merged.pop("n"))  # type: ignore[call-overload]
        return _request(n=n, **merged)

    with pytest.raises(PolicyDenied, match="baseline-consent-required"):
        pdp.authorize_check(BRONZE, program, req())
    # With a consent reference the consent forbid lifts, but no program lists this purpose.
    with pytest.raises(PolicyDenied, match="Program::dibao: no permit matched"):
        pdp.authorize_check(BRONZE, program, req(consent_ref="cns_" + "a" * 22))
    # Element-level decision alone: without consent the consent forbid applies.
    decision = pdp.decide_check(BRONZE, "dibao", ["tax.monthly_income"], req(), DAYTIME)
    assert "baseline-consent-required" in decision.reasons
    ref = consents.register(subject, "civil_affairs", "income_certificate", DAYTIME, DAYTIME + timedelta(days=1), 1)
    consents.check(ref, subject, "civil_affairs", "income_certificate", DAYTIME)
    with pytest.raises(PolicyDenied, match="one-time consent already used"):
        pdp._consent(req(consent_ref=ref), "civil_affairs", DAYTIME, "income_certificate")


def test_node_decides_only_its_own_elements(engine: PolicyEngine) -> None:
    common = dict(
        user="ca-caseworker-gold",
        requesting_agency="civil_affairs",
        program="dibao",
        elements=DIBAO_ELEMENTS,
        purpose="dibao",
        legal_basis="SAR-2014-art-12",
        case_id="C-1",
        at=DAYTIME,
    )
    tax = node_decision(engine, node_agency="tax", **common)  # type: ignore[arg-type]
    assert tax.allowed and set(tax.policy_ids) == {"dibao-tax-monthly-income", "dibao-tax-registered-businesses"}
    household = node_decision(engine, node_agency="household", **common)  # type: ignore[arg-type]
    assert not household.allowed  # core data: the node refuses without an approval reference
    assert not node_decision(engine, node_agency="medical", **common).allowed  # type: ignore[arg-type]


class _Ports:
    """Fake budget and consent ports recording the order of calls; `refuse` makes verify refuse,
    `race` makes the consent reservation refuse (a concurrent use took it after verify)."""

    def __init__(self, refuse: bool = False, race: bool = False) -> None:
        self.calls: list[str] = []
        self.refuse = refuse
        self.race = race
        self.budget = _BudgetFake(self.calls)

    def verify(self, ref: str, subject: str, agency: str, purpose: str, now: object, program: object = None) -> None:
        self.calls.append("verify")
        if self.refuse:
            raise PolicyDenied("consent refused: expired")

    def reserve(
        self, ref: str, subject: str, agency: str, purpose: str, now: object = None, program: object = None
    ) -> str:
        self.calls.append("reserve consent")
        if self.race:
            raise PolicyDenied("consent refused: one-time consent already used")
        return "crs_1"

    def revoked(self, reservation: str) -> bool:
        self.calls.append(f"revoked? {reservation}")
        return False

    def commit(self, reservation: str) -> bool:
        self.calls.append(f"commit {reservation}")
        return True

    def release(self, reservation: str) -> bool:
        self.calls.append(f"release {reservation}")
        return True

    def artefact(self, ref: str) -> str:
        return '{"signed": "artefact"}'


class _BudgetFake:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def reserve(self, subjects: object, program: str, agency: str, rule: object, now: object = None) -> object:
        self.calls.append("reserve budget")
        from policies.budgets import BudgetReceipt

        return BudgetReceipt(1, 3, 30, reservation="rsv_1")

    def commit(self, reservation: str) -> bool:
        self.calls.append(f"commit {reservation}")
        return True

    def release(self, reservation: str) -> bool:
        self.calls.append(f"release {reservation}")
        return True


def test_consent_is_verified_before_the_budget_is_reserved_and_reserved_after(engine: PolicyEngine) -> None:
    ports = _Ports()
    pdp = CheckAuthorizer(engine, budgets=ports.budget, consents=ports, approvals=APPROVALS, clock=lambda: DAYTIME)
    outcome = pdp.authorize_check(GOLD, DIBAO, _request(n=1, consent_ref="cns_" + "a" * 22))
    assert ports.calls == ["verify", "reserve budget", "reserve consent"]
    assert outcome.consent_artefact == '{"signed": "artefact"}'  # forwarded to the nodes
    outcome.charge.commit()
    # A revocation looked for first; the consent committed last, so nothing that fails before it uses it up.
    assert ports.calls[3:] == ["revoked? crs_1", "commit rsv_1", "commit crs_1"]  # (the approval is a registry)
    ports.calls.clear()
    outcome.charge.release()
    assert ports.calls == ["release crs_1", "release rsv_1"]


def test_a_consent_lost_to_a_concurrent_use_gives_the_budget_back(engine: PolicyEngine) -> None:
    ports = _Ports(race=True)
    pdp = CheckAuthorizer(engine, budgets=ports.budget, consents=ports, approvals=APPROVALS, clock=lambda: DAYTIME)
    with pytest.raises(PolicyDenied, match="one-time consent already used"):
        pdp.authorize_check(GOLD, DIBAO, _request(n=1, consent_ref="cns_" + "a" * 22))
    assert ports.calls == ["verify", "reserve budget", "reserve consent", "release rsv_1"]


def test_a_refused_consent_spends_no_budget(engine: PolicyEngine) -> None:
    ports = _Ports(refuse=True)
    pdp = CheckAuthorizer(engine, budgets=ports.budget, consents=ports, approvals=APPROVALS, clock=lambda: DAYTIME)
    with pytest.raises(PolicyDenied, match="expired"):
        pdp.authorize_check(GOLD, DIBAO, _request(n=1, consent_ref="cns_" + "a" * 22))
    assert ports.calls == ["verify"]
