"""The `train` decision: job validation, element -> dataset mapping, Cedar per dataset, the ε ledger
charged all-or-nothing, and node-side PolicyAdmission (Cedar + PrivacyLedger, restart-safe)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from federated.admission import PolicyAdmission, by_agency, require_approval
from federated.jobs import JobSpec, parse_job
from federated.training_policy import budget_charges, charge, decide_training
from gateway.training_service import parse_request
from policies.budgets import PrivacyLedger
from policies.decision import PolicyEngine
from tests.unit.training_support import FEATURES, LABEL, job_body, write_region_stores, write_training_policies
from xgate.errors import BudgetExhausted, ConfigError, InvalidInput, PolicyDenied
from xgate.principal import Principal

ANALYST = Principal("an-liu", "hrss", "analyst", "gold")  # registered in principals.toml


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_training_policies(tmp_path_factory.mktemp("policies"), cap=3.0)


@pytest.fixture(scope="module")
def engine(policy_dir: Path) -> PolicyEngine:
    return PolicyEngine.load(policy_dir)


def job(job_id: str = "job-a", epsilon: float | None = None, requester: str = "an-liu", **kw: object) -> JobSpec:
    return parse_job({**job_body(job_id, epsilon), "requester": requester, **kw})


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"legal_basis": ""}, "legal_basis"),
        ({"legal_basis": "free text with spaces"}, "legal_basis"),
        ({"features": ["Not An Element"]}, "features.0"),
        ({"dp": {"epsilon": -1, "delta": 1e-5, "clip": 1.0}}, "dp.epsilon"),
        ({"rounds": 0}, "rounds"),
        ({"surprise": 1}, "surprise"),
        ({"features": [LABEL]}, "job"),  # label also a feature: a model-level error
    ],
)
def test_rest_body_errors_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_request({**job_body("job-v"), **change}, ANALYST)
    problems = err.value.details["problems"]
    assert err.value.message.startswith(problems[0]["field"]) and field in {p["field"] for p in problems} | {"job"}


def test_rest_body_needs_legal_basis_and_runs_for_the_caller_only() -> None:
    body = job_body("job-v")
    del body["legal_basis"]
    with pytest.raises(InvalidInput, match="legal_basis"):
        parse_request(body, ANALYST)
    with pytest.raises(InvalidInput, match="body"):
        parse_request(["not", "an", "object"], ANALYST)
    with pytest.raises(PolicyDenied, match="requester"):
        parse_request({**job_body("job-v"), "requester": "medical-analyst"}, ANALYST)
    parsed = parse_request(job_body("job-v"), ANALYST)
    assert parsed.requester == "an-liu" and parsed.legal_basis == "SIL-2010-art-87"
    assert parsed.elements() == (*FEATURES, LABEL)


def test_local_jobs_may_omit_legal_basis_but_policy_refuses_them(engine: PolicyEngine) -> None:
    local = job(legal_basis="")
    d = decide_training(engine, local, user="an-liu", agency="hrss")
    assert not d.allowed and "baseline-legal-basis-required" in d.reasons


# -- mapping and decisions ------------------------------------------------------------------------


def test_elements_map_to_registered_datasets(engine: PolicyEngine) -> None:
    covered, unmapped = engine.training_datasets([*FEATURES, "hrss.contribution_months", "tax.monthly_income"])
    assert covered == {"hrss.contributions_2025": ("hrss.contribution_months",), "medical.claims_2025": tuple(FEATURES)}
    assert unmapped == ("tax.monthly_income",)


def test_allowed_decision_names_policy_and_set_hash(engine: PolicyEngine) -> None:
    d = decide_training(engine, job(), user="an-liu", agency="hrss")
    assert d.allowed and d.policy_ids == ("train-medical-claims",) and d.datasets == ("medical.claims_2025",)
    assert d.policy_set_hash == engine.policy_set_hash
    d.raise_if_denied()


@pytest.mark.parametrize(
    ("user", "agency", "change", "reason"),
    [
        ("cw-zhang", "civil_affairs", {}, "no permit matched"),  # a caseworker, not an analyst
        ("an-liu", "hrss", {"purpose": "dibao"}, "no permit matched"),  # purpose outside the agreement
        ("an-liu", "hrss", {"purpose": "not_registered"}, "not registered"),
        ("an-liu", "hrss", {"legal_basis": "SAR-2014-art-12"}, "no permit matched"),
        ("an-liu", "tax", {}, "requesting agency does not match"),
        ("an-liu", "hrss", {"features": ["tax.monthly_income"]}, "not in any dataset registered"),
        ("ghost", "hrss", {}, "unknown principal"),
    ],
)
def test_refusals_name_the_reason(
    engine: PolicyEngine, user: str, agency: str, change: dict[str, object], reason: str
) -> None:
    d = decide_training(engine, job(**change), user=user, agency=agency)
    assert not d.allowed and reason in d.reason
    with pytest.raises(PolicyDenied, match="refused by policy"):
        d.raise_if_denied()


def test_decision_covers_only_the_given_elements(engine: PolicyEngine) -> None:
    mixed = job(features=[*FEATURES, "hrss.contribution_months"])
    assert decide_training(engine, mixed, user="an-liu", agency="hrss").datasets == (
        "hrss.contributions_2025",
        "medical.claims_2025",
    )
    node = decide_training(engine, mixed, user="an-liu", elements=FEATURES)
    assert node.allowed and node.datasets == ("medical.claims_2025",)
    assert not decide_training(engine, mixed, user="an-liu", elements=["x.y"]).allowed
    assert not decide_training(engine, job(), user="").allowed


def test_core_datasets_need_an_approval_reference(policy_dir: Path, tmp_path: Path) -> None:
    core = shutil.copytree(policy_dir, tmp_path / "p")
    text = (core / "datasets.toml").read_text().replace('classification = "important"', 'classification = "core"', 1)
    (core / "datasets.toml").write_text(text)
    eng = PolicyEngine.load(core)
    assert "baseline-core-dataset-needs-approval" in decide_training(eng, job(), user="an-liu").reasons
    assert decide_training(eng, job(approval_ref="AP-2026-7"), user="an-liu").allowed


@pytest.mark.parametrize(
    ("elements", "problem"),
    [
        ('["medical.nope"]', "does not declare"),
        ('["tax.monthly_income"]', "of agency 'tax'"),
        ('["medical.annual_claims", "medical.annual_claims"]', "already in dataset"),
    ],
)
def test_loader_refuses_bad_dataset_elements(policy_dir: Path, tmp_path: Path, elements: str, problem: str) -> None:
    bad = shutil.copytree(policy_dir, tmp_path / "p")
    (bad / "datasets.toml").write_text(
        f'[[datasets]]\nid = "medical.xx"\nagency = "medical"\nclassification = "general"\nepsilon_cap = 1.0\n'
        f"elements = {elements}\n"
    )
    with pytest.raises(ConfigError, match=problem):
        PolicyEngine.load(bad)


# -- ε ----------------------------------------------------------------------------------------------


def test_spend_all_is_all_or_nothing(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.sqlite")
    ledger.spend("b.set", "earlier", 2.5, cap=3.0)
    with pytest.raises(BudgetExhausted, match=r"b\.set"):
        ledger.spend_all("job-1", [("a.set", 1.0, 3.0), ("b.set", 1.0, 3.0)])
    assert ledger.spent("a.set") == 0.0  # nothing charged on the dataset that had room
    entries = ledger.spend_all("job-2", [("a.set", 1.0, 3.0), ("b.set", 0.5, 3.0)])
    assert [e.spent for e in entries] == [1.0, 3.0]
    assert all(e.replayed for e in ledger.spend_all("job-2", [("a.set", 1.0, 3.0), ("b.set", 0.5, 3.0)]))
    with pytest.raises(InvalidInput):
        ledger.spend_all("job-3", [("a.set", 1.0, 3.0), ("a.set", 1.0, 3.0)])


def test_gateway_charge(engine: PolicyEngine, tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "gw.sqlite")
    assert charge(ledger, engine, job("plain"), ["medical.claims_2025"]) == []  # no DP: no ε
    assert budget_charges(engine, job("dp-0", 2.0), ["medical.claims_2025"]) == [("medical.claims_2025", 2.0, 3.0)]
    charge(ledger, engine, job("dp-0", 2.0), ["medical.claims_2025"])
    with pytest.raises(BudgetExhausted) as err:
        charge(ledger, engine, job("dp2", 1.5), ["medical.claims_2025"])
    assert err.value.details["spent"] == 2.0 and err.value.details["cap"] == 3.0


# -- node-side admission ----------------------------------------------------------------------------


def test_policy_admission_charges_once_survives_restart_and_refuses_over_cap(
    engine: PolicyEngine, tmp_path: Path
) -> None:
    (agency, store, ledger), *_ = write_region_stores(tmp_path, [120])
    first = PolicyAdmission(engine, ledger, store)
    d = first(job("dp-1", 2.0), agency)
    assert d.approved and d.epsilon == 2.0 and d.policy_ids == ("train-medical-claims",)
    assert d.datasets == ("medical.claims_2025",) and d.policy_set_hash == engine.policy_set_hash
    assert d.audit_fields()["policy_ids"] == ["train-medical-claims"]
    assert first(job("dp-1", 2.0), agency) == d  # idempotent: decided and charged once
    require_approval(ledger, job("dp-1", 2.0))  # what the ClientApp checks

    restarted = PolicyAdmission(engine, ledger, store)
    assert restarted(job("dp-1", 2.0), agency) == d
    over = restarted(job("dp-2", 1.5), agency)
    assert not over.approved and "exhausted" in over.reason and over.epsilon == 0.0
    assert PrivacyLedger(ledger).spent("medical.claims_2025") == 2.0
    with pytest.raises(PolicyDenied):
        require_approval(ledger, job("dp-2", 1.5))
    assert restarted(job("plain", None), agency).approved  # no DP: Cedar alone decides
    # The same id with another definition is decided again, and charged again: over the cap here.
    reused = restarted(job("dp-1", 2.0, rounds=3), agency)
    assert not reused.approved and "exhausted" in reused.reason and reused.redecided == "job definition changed"
    assert restarted(job("plain2", None, rounds=3), agency).approved
    assert restarted(job("dp-0", 1.0), agency).approved  # within the cap: 2 + 1


def test_policy_admission_refusals(engine: PolicyEngine, tmp_path: Path) -> None:
    (agency, store, ledger), *_ = write_region_stores(tmp_path, [80])
    adm = PolicyAdmission(engine, ledger, store)
    assert "no permit matched" in adm(job("pj1", purpose="dibao"), agency).reason
    assert "no requester" in adm(job("pj2", requester=""), agency).reason
    assert (
        "none of the job"
        in adm(job("pj3", features=["hrss.contribution_months"], label="hrss.pension_elsewhere"), agency).reason
    )
    assert "unknown principal" in adm(job("pj4", requester="ghost"), agency).reason
    dispatch = by_agency({agency: adm})
    assert not dispatch(job("pj5"), "elsewhere").approved and dispatch(job("pj5"), agency).approved


def test_node_decides_at_its_own_site_when_nobody_decided_before(policy_dir: Path, tmp_path: Path) -> None:
    """The ClientApp guard (admit_at_node): a SuperNode started elsewhere, with only its own policy
    directory and ledger, runs the Cedar decision and charges ε itself, once."""
    from federated.admission import admit_at_node

    (agency, store, ledger), *_ = write_region_stores(tmp_path, [60])
    admit_at_node(job("site-1", 1.0), agency, ledger, store, policy_dir)
    admit_at_node(job("site-1", 1.0), agency, ledger, store, policy_dir)  # already decided: not charged again
    assert PrivacyLedger(ledger).spent("medical.claims_2025") == 1.0
    with pytest.raises(PolicyDenied, match="no permit matched"):
        admit_at_node(job("site-2", purpose="dibao"), agency, ledger, store, policy_dir)
    with pytest.raises(PolicyDenied, match="not approved"):
        admit_at_node(job("site-3"), agency, tmp_path / "other-ledger.sqlite", store, None)  # nothing decided


def test_signed_node_refuses_a_job_under_an_edited_policy_set(policy_dir: Path, tmp_path: Path) -> None:
    """`signed_policies`: a SuperNode's admission verifies the CA-signed bundle before deciding; a train
    agreement widened on disk after install refuses the job instead of deciding under it."""
    from crypto import pki
    from crypto.policy_bundle import install, publish
    from federated.admission import admit_at_node

    pki.init_ca(tmp_path / "ca", "test CA")
    ca_cert = tmp_path / "ca" / pki.CA_CERT
    publish(pki.load_ca(tmp_path / "ca").key, policy_dir, 1, tmp_path / "v1.json")
    installed = tmp_path / "installed"
    install(tmp_path / "v1.json", ca_cert, installed)
    (agency, store, ledger), *_ = write_region_stores(tmp_path / "site", [60])
    admit_at_node(job("signed-1"), agency, ledger, store, installed, ca_cert)  # the signed set: admitted
    agreement = installed / "agreements" / "train-medical-claims.cedar"
    agreement.write_text(agreement.read_text().replace('"fraud_detection"', '"dibao"'))
    with pytest.raises(PolicyDenied, match="its policy set is not the signed bundle: policy file agreements/train"):
        admit_at_node(job("signed-2", purpose="dibao"), agency, ledger, store, installed, ca_cert)
    with pytest.raises(PolicyDenied, match="not approved"):
        require_approval(ledger, job("signed-2", purpose="dibao"))  # nothing was recorded for it
    admit_at_node(job("signed-3", purpose="dibao"), agency, tmp_path / "l2.sqlite", store, installed)  # unsigned mode
