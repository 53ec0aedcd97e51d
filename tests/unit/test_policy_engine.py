"""Policy engine: table-driven allow/deny, fail-closed behaviour, load errors with file and line."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from policies import introspect
from policies.catalogue import load_catalogue
from policies.decision import DEFAULT_POLICY_DIR, FAIL_CLOSED, PolicyEngine
from policies.loader import split_statements
from policies.types import NO_PERMIT, AccessRequest, check_requests, node_requests
from tests.unit.test_policy_support import DAYTIME, DIBAO_ELEMENTS, NIGHT, copy_policies
from xgate.errors import ConfigError, PolicyDenied


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.load(DEFAULT_POLICY_DIR)


BASE = AccessRequest(
    principal="ca-caseworker-silver",
    action="check",
    resource="DataElement::tax.monthly_income",
    purpose="dibao",
    legal_basis="SAR-2014-art-12",
    case_id="CASE-1",
    program="dibao",
    requesting_agency="civil_affairs",
    at=DAYTIME,
)

CASES = [
    # (name, changes to BASE, allowed, expected reason substring)
    ("right case", {}, True, "dibao-tax-monthly-income"),
    ("gold tier", {"principal": "ca-caseworker-gold"}, True, "dibao-tax-monthly-income"),
    ("wrong purpose", {"purpose": "unemployment_subsidy"}, False, NO_PERMIT),
    ("unregistered purpose", {"purpose": "curiosity"}, False, "purpose 'curiosity' is not registered"),
    ("wrong legal basis", {"legal_basis": "SAR-2014-art-99"}, False, NO_PERMIT),
    ("missing legal basis", {"legal_basis": ""}, False, "baseline-legal-basis-required"),
    ("missing case", {"case_id": ""}, False, "baseline-case-required"),
    ("outside hours", {"at": NIGHT}, False, NO_PERMIT),
    ("tier too low", {"principal": "ca-caseworker-bronze"}, False, NO_PERMIT),
    ("wrong role", {"principal": "ca-analyst"}, False, NO_PERMIT),
    ("other agency", {"principal": "hrss-caseworker", "requesting_agency": "hrss"}, False, NO_PERMIT),
    ("agency mismatch", {"requesting_agency": "tax"}, False, "does not match the principal's registered agency"),
    ("unknown principal", {"principal": "mallory"}, False, "unknown principal"),
    ("unknown element", {"resource": "DataElement::tax.secret_stash"}, False, "unknown resource"),
    ("bad resource syntax", {"resource": "tax.monthly_income"}, False, "resource must look like"),
    ("unknown action", {"action": "delete"}, False, "unknown action"),
    ("naive time", {"at": DAYTIME.replace(tzinfo=None)}, False, FAIL_CLOSED),
    ("core without approval", {"resource": "DataElement::household.alive_resident"}, False, "baseline-core-needs"),
    (
        "core with approval",
        {"resource": "DataElement::household.alive_resident", "approval_ref": "AP-2026-001"},
        True,
        "dibao-household-alive-resident",
    ),
    (
        "consent purpose without consent",
        {"purpose": "income_certificate", "legal_basis": "PIPL-2021-art-13-1", "program": ""},
        False,
        "baseline-consent-required",
    ),
    (
        "consent purpose with a ref but not checked",
        {"purpose": "income_certificate", "legal_basis": "PIPL-2021-art-13-1", "program": "", "consent_ref": "cns_x"},
        False,
        "baseline-consent-required",
    ),
    (
        "consent purpose with valid consent",
        {
            "purpose": "income_certificate",
            "legal_basis": "PIPL-2021-art-13-1",
            "program": "",
            "consent_ref": "cns_x",
            "consent_valid": True,
            "principal": "ca-caseworker-bronze",
        },
        True,
        "income-certificate-tax-monthly-income",
    ),
    ("program access", {"resource": "Program::dibao"}, True, "baseline-program-access"),
    ("program for other agency", {"resource": "Program::pension_survival"}, False, NO_PERMIT),
    (
        "security officer reads audit",
        {
            "principal": "security-officer",
            "action": "read_audit",
            "resource": "AuditLog::federation",
            "purpose": "security_audit",
            "program": "",
        },
        True,
        "baseline-security-officers-read-audit",
    ),
    (
        "caseworker may not read audit",
        {"action": "read_audit", "resource": "AuditLog::federation", "purpose": "security_audit", "program": ""},
        False,
        NO_PERMIT,
    ),
    (
        "admin administers own node",
        {
            "principal": "tax-admin",
            "requesting_agency": "tax",
            "action": "administer",
            "resource": "Node::tax",
            "purpose": "operations",
            "program": "",
        },
        True,
        "baseline-admins-administer-own-node",
    ),
    (
        "admin may not administer another node",
        {
            "principal": "tax-admin",
            "requesting_agency": "tax",
            "action": "administer",
            "resource": "Node::hrss",
            "purpose": "operations",
            "program": "",
        },
        False,
        NO_PERMIT,
    ),
    (
        "analyst trains",
        {
            "principal": "medical-analyst",
            "requesting_agency": "medical",
            "action": "train",
            "resource": "Dataset::medical.claims_2025",
            "purpose": "fraud_detection",
            "legal_basis": "SIL-2010-art-87",
            "program": "",
        },
        True,
        "train-medical-claims",
    ),
    (
        "civil affairs analyst may not train",
        {
            "principal": "ca-analyst",
            "action": "train",
            "resource": "Dataset::medical.claims_2025",
            "purpose": "fraud_detection",
            "legal_basis": "SIL-2010-art-87",
            "program": "",
        },
        False,
        NO_PERMIT,
    ),
]


@pytest.mark.parametrize(("name", "changes", "allowed", "reason"), CASES, ids=[c[0] for c in CASES])
def test_decision_table(engine: PolicyEngine, name: str, changes: dict, allowed: bool, reason: str) -> None:
    decision = engine.decide(dataclasses.replace(BASE, **changes))
    assert decision.allowed is allowed, (name, decision)
    assert any(reason in r for r in decision.reasons), decision.reasons
    assert decision.policy_set_hash == engine.policy_set_hash


def test_whole_dibao_check_needs_every_element(engine: PolicyEngine) -> None:
    kwargs = dict(
        user="ca-caseworker-silver",
        agency="civil_affairs",
        program="dibao",
        elements=DIBAO_ELEMENTS,
        purpose="dibao",
        legal_basis="SAR-2014-art-12",
        case_id="C-9",
        at=DAYTIME,
    )
    denied = engine.decide_all(check_requests(**kwargs))  # household data is core: needs an approval
    assert not denied.allowed
    assert denied.reasons == ("baseline-core-needs-approval",)
    assert [d.allowed for d in denied.items] == [True, True, True, True, True, False]
    with pytest.raises(PolicyDenied):
        denied.raise_if_denied()

    allowed = engine.decide_all(check_requests(**kwargs, approval_ref="AP-7"))
    assert allowed.allowed
    assert "baseline-program-access" in allowed.policy_ids
    assert allowed.budget is not None and (allowed.budget.max_checks, allowed.budget.window_days) == (3, 30)
    allowed.raise_if_denied()

    # The household node re-decides only its own element, and reaches the same verdict.
    mine = node_requests("household", check_requests(**kwargs, approval_ref="AP-7"))
    assert [r.resource for r in mine] == ["DataElement::household.alive_resident"]
    assert engine.decide_all(mine).allowed


def test_empty_batch_is_denied(engine: PolicyEngine) -> None:
    assert not engine.decide_all([]).allowed


def test_engine_exception_fails_closed(engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    import cedarpy

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("engine on fire")

    monkeypatch.setattr(cedarpy, "is_authorized_batch", boom)
    decision = engine.decide(BASE)
    assert not decision.allowed
    assert decision.reasons == (FAIL_CLOSED,)
    assert "engine on fire" in decision.errors[0]


def test_policy_evaluation_error_fails_closed(tmp_path: Path) -> None:
    # A forbid that errors at run time must not let a permit through.
    root = copy_policies(tmp_path / "p")
    # Valid against the schema, but overflows at run time (hour >= 1): Cedar skips erroring policies.
    (root / "agreements" / "zz-broken.cedar").write_text(
        '@id("zz-broken")\nforbid (principal, action, resource)\nwhen { context.hour + 9223372036854775807 > 0 };\n'
    )
    engine = PolicyEngine.load(root)
    decision = engine.decide(BASE)
    assert not decision.allowed
    assert decision.errors
    assert "fail closed" in decision.reasons[0]


# -- loading ------------------------------------------------------------------------------------

BAD_FILES = [
    ("syntax", 'permit (principal, action, resource)\nwhen { principal.agency == "x" &&& true };\n', 5),
    ("schema", 'permit (principal, action == Action::"check", resource)\nwhen { principal.tierx == "gold" };\n', 5),
    ("no id", "forbid (principal, action, resource);\n", 3),
    ("unknown action", 'permit (principal, action == Action::"steal", resource);\n', 4),
]


@pytest.mark.parametrize(("name", "body", "line"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_invalid_policy_file_names_file_and_line(tmp_path: Path, name: str, body: str, line: int) -> None:
    root = copy_policies(tmp_path / "p")
    bad = root / "agreements" / "bad.cedar"
    header = "// a broken agreement\n\n" + ('@id("bad")\n' if name != "no id" else "")
    bad.write_text(header + body)
    with pytest.raises(ConfigError) as err:
        PolicyEngine.load(root)
    assert err.value.details["file"] == str(bad)
    assert err.value.details["line"] == line, err.value.message
    assert f"line {line}" in err.value.message


def test_duplicate_policy_id_is_refused(tmp_path: Path) -> None:
    root = copy_policies(tmp_path / "p")
    src = root / "agreements" / "dibao-tax-monthly-income.cedar"
    (root / "agreements" / "copy.cedar").write_text(src.read_text())
    with pytest.raises(ConfigError, match="already used"):
        PolicyEngine.load(root)


def test_invalid_schema_and_data_files(tmp_path: Path) -> None:
    root = copy_policies(tmp_path / "p")
    schema = root / "schema" / "xgate.cedarschema"
    schema.write_text(schema.read_text().replace("tier: String,", "tier: Strin,"))
    with pytest.raises(ConfigError, match="schema"):
        PolicyEngine.load(root)

    root = copy_policies(tmp_path / "q")
    users = root / "principals.toml"
    users.write_text(users.read_text().replace('tier = "bronze"', 'tier = "platinum"', 1))
    with pytest.raises(ConfigError, match=r"principals .*line \d+"):
        PolicyEngine.load(root)


def test_bad_budget_annotation_is_refused(tmp_path: Path) -> None:
    root = copy_policies(tmp_path / "p")
    f = root / "agreements" / "dibao-tax-monthly-income.cedar"
    f.write_text(f.read_text().replace('@budget_max_checks("3")', '@budget_max_checks("three")'))
    with pytest.raises(ConfigError, match="budget"):
        PolicyEngine.load(root)


def test_missing_directory_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        PolicyEngine.load(tmp_path / "nope")


def test_hash_is_stable_and_covers_every_file(tmp_path: Path, engine: PolicyEngine) -> None:
    root = copy_policies(tmp_path / "p")
    assert PolicyEngine.load(root).policy_set_hash == engine.policy_set_hash
    purposes = root / "purposes.toml"
    purposes.write_text(purposes.read_text() + "\n# edited\n")
    assert PolicyEngine.load(root).policy_set_hash != engine.policy_set_hash


def test_statement_splitter_ignores_semicolons_in_strings_and_comments() -> None:
    text = '// a; b\n@id("x;y")\npermit (principal, action, resource)\nwhen { context.purpose == "a;b" };\n'
    statements = split_statements(text)
    assert len(statements) == 1
    assert statements[0].line == 2


# -- consistency with the rest of the federation ---------------------------------------------------


def test_data_elements_agree_with_catalogue(engine: PolicyEngine) -> None:
    catalogue, _ = load_catalogue()
    for element in catalogue.elements:
        attrs = engine.resource_attrs("DataElement", element.id)
        assert attrs == {"agency": element.agency, "classification": str(element.classification)}, element.id


def test_every_shipped_program_element_is_covered_by_an_agreement(engine: PolicyEngine) -> None:
    for path in sorted((DEFAULT_POLICY_DIR / "programs").glob("*.toml")):
        program = tomllib.loads(path.read_text())
        header = program["program"]
        elements = sorted({t["element"] for c in program["criteria"] for t in c["terms"]})
        for agency in header["requester_agencies"]:
            for element in elements:
                grants = [
                    g
                    for g in introspect.who_can(engine, element)
                    if header["purposes"][0] in g.purposes and g.principal.get("agency") == agency
                ]
                assert grants, f"{header['id']}: no agreement lets {agency} check {element}"


# -- analysis -------------------------------------------------------------------------------------


def test_who_can_lists_agreements_and_registered_users(engine: PolicyEngine) -> None:
    grants = {g.policy_id: g for g in introspect.who_can(engine, "tax.monthly_income")}
    assert set(grants) == {
        "dibao-tax-monthly-income",
        "unemployment-tax-monthly-income",
        "income-certificate-tax-monthly-income",
        "target-discovery-tax-monthly-income",
    }
    dibao = grants["dibao-tax-monthly-income"]
    assert dibao.purposes == ("dibao",)
    assert dibao.actions == ("check",)
    assert dibao.principal == {"agency": "civil_affairs", "role": "caseworker", "tier": "gold | silver"}
    assert {"ca-caseworker-gold", "ca-caseworker-silver", "cw-zhang", "cw-li"} == set(dibao.principals)
    assert 'context.legal_basis == "SAR-2014-art-12"' in dibao.conditions
    restricted = {s.info.id for s in introspect.restrictions(engine, "household.deceased")}
    assert "baseline-core-needs-approval" in restricted
    assert introspect.who_can(engine, "medical.inpatient_days") == []


def test_explain_points_at_the_failing_condition(engine: PolicyEngine) -> None:
    text = introspect.explain(engine, dataclasses.replace(BASE, principal="ca-caseworker-bronze"))
    assert "decision: DENY" in text
    assert "FAIL" in text and "principal.tier = 'bronze'" in text
    assert introspect.explain(engine, BASE).count("MATCHED") == 1


def test_sliced_policy_sets_decide_like_the_full_set(engine: PolicyEngine) -> None:
    # The engine evaluates only the policies whose scope can match the resource; that must never
    # change a decision. Compare against Cedar with the full set over a grid of requests.
    import itertools

    import cedarpy

    resources = [f"DataElement::{e}" for e in ("tax.monthly_income", "household.deceased", "medical.annual_claims")]
    resources += ["Program::dibao", "Dataset::medical.claims_2025", "AuditLog::federation", "Node::tax"]
    users = [
        "ca-caseworker-silver",
        "ca-caseworker-bronze",
        "hrss-caseworker",
        "medical-analyst",
        "security-officer",
        "tax-admin",
    ]
    contexts = [
        {"purpose": "dibao", "legal_basis": "SAR-2014-art-12", "case_id": "C"},
        {"purpose": "pension_survival", "legal_basis": "SIL-2010-art-17", "case_id": "C", "approval_ref": "AP"},
        {"purpose": "fraud_detection", "legal_basis": "SIL-2010-art-87"},
        {"purpose": "security_audit"},
        {"purpose": "operations"},
    ]
    allowed = 0
    for user, action, resource, ctx in itertools.product(
        users, ("check", "train", "read_audit", "administer"), resources, contexts
    ):
        request = AccessRequest(principal=user, action=action, resource=resource, at=DAYTIME, **ctx)
        prepared = engine._prepare(request).cedar
        assert prepared is not None
        full = cedarpy.is_authorized(prepared, engine._d.policy_set, engine._entities)
        if full.diagnostics.errors:  # action/resource pairs the schema does not allow
            assert not engine.decide(request).allowed
            continue
        decision = engine.decide(request)
        assert decision.allowed == full.allowed, request
        assert set(decision.policy_ids) == set(full.diagnostics.reasons) or not decision.allowed
        allowed += decision.allowed
    assert allowed >= 5  # the grid exercises allows, not only denials


def test_extra_principals_from_another_registry(engine: PolicyEngine) -> None:
    from policies.loader import UserEntry

    extra = UserEntry(id="cw-new", agency="civil_affairs", role="caseworker", tier="silver")
    merged = PolicyEngine.load(DEFAULT_POLICY_DIR, principals=[extra])
    assert merged.decide(dataclasses.replace(BASE, principal="cw-new")).allowed
    assert not engine.decide(dataclasses.replace(BASE, principal="cw-new")).allowed
    assert merged.policy_set_hash != engine.policy_set_hash
    clash = UserEntry(id="ca-caseworker-bronze", agency="civil_affairs", role="caseworker", tier="gold")
    with pytest.raises(ConfigError, match="differs"):
        PolicyEngine.load(DEFAULT_POLICY_DIR, principals=[clash])
