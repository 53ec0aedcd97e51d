"""Policies over real processes: tiers shape HE results, budgets, approvals, consent, node refusal."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest

from app.demo import oracle
from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, start_gateway, write_gateway_config
from client.sdk import GatewayClient, GatewayError
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry
from xgate.errors import InvalidInput

pytestmark = pytest.mark.integration
DIBAO = LEGAL_BASIS["dibao"]
PROGRAMS = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0])


def _client(federation, label: str, url: str | None = None) -> GatewayClient:
    return federation.client(label, url)


def _ids(federation, start: int, n: int) -> list[str]:
    # Applicants 0-239 and 240-299 belong to other test files (probing budgets are real);
    # these tests use people from the wider population instead.
    import csv

    with (federation.data_dir / "tax.csv").open() as handle:
        people = [row["national_id"] for row in csv.DictReader(handle)]
    return people[1000 + start : 1000 + start + n]


def test_silver_tier_sees_only_the_overall_verdict(federation):
    ids = _ids(federation, 0, 40)
    with _client(federation, "caseworker_silver") as client:
        result = client.check("dibao", ids, "dibao", DIBAO, "pol-1", approval_ref=DEV_APPROVAL_REF)
    truth = oracle(federation, PROGRAMS.get("dibao"), ids)
    expected = np.logical_and.reduce(list(truth.values()))
    assert result.view == "overall"
    assert np.array_equal(result.overall, expected)
    assert next(set(row) for row in result.rows()) == {"subject", "eligible"}
    assert all(name.startswith("position_") for name in result.criteria)  # criteria are anonymous


def test_silver_answers_one_program_of_an_overlap_group_per_person(federation):
    """dibao and target_discovery share criteria: their two silver verdicts on one person would
    tell which criterion failed, so the gateway answers the second for no subject the first has
    answered within the claim window (403, naming the program), all or nothing, and charges
    nothing for it."""
    ids, fresh = _ids(federation, 200, 6), _ids(federation, 206, 4)
    with _client(federation, "caseworker_silver") as client:
        first = client.check("dibao", ids, "dibao", DIBAO, "pol-11", approval_ref=DEV_APPROVAL_REF)
        assert first.view == "overall"
        for subjects in (ids, [*fresh, ids[0]]):
            with pytest.raises(GatewayError) as info:
                client.check(
                    "target_discovery", subjects, "target_discovery", DIBAO, "pol-11", approval_ref=DEV_APPROVAL_REF
                )
            assert info.value.http_status == 403
            assert "silver result from program 'dibao'" in info.value.message
        again = client.check("dibao", ids, "dibao", DIBAO, "pol-11", approval_ref=DEV_APPROVAL_REF)
        assert np.array_equal(again.overall, first.overall)  # a repeat of the same program is answered
        other = client.check(
            "target_discovery", fresh, "target_discovery", DIBAO, "pol-11", approval_ref=DEV_APPROVAL_REF
        )
        assert other.view == "overall" and len(other.overall) == len(fresh)


def _plausible(count, true_count: int) -> bool:
    """The noisy count is one the randomized response gives the true count with probability >= 1e-6
    (its exact distribution), and the true count lies within 5 standard errors of the estimate."""
    from exchange.cohort import noisy_count_pmf

    pmf = noisy_count_pmf(true_count, count.subjects, count.flip_probability)
    return pmf[count.noisy_count] >= 1e-6 and abs(count.estimate - true_count) <= 5 * count.standard_error


def test_bronze_tier_sees_cohort_counts_only(federation):
    """Target discovery: a bronze caseworker learns how many in a cohort look eligible (per
    criterion, randomized per slot and debiased), not who."""
    ids = _ids(federation, 40, 30)
    with _client(federation, "caseworker_bronze") as client:
        result = client.check(
            "target_discovery", ids, "target_discovery", DIBAO, "pol-2", approval_ref=DEV_APPROVAL_REF
        )
        with pytest.raises(InvalidInput, match="cohort"):
            result.rows()
        truth = oracle(federation, PROGRAMS.get("target_discovery"), ids)
        counts = result.cohort_counts()
        assert set(counts) == set(truth)  # per criterion; no overall count (slots shuffled per criterion)
        for criterion, passes in truth.items():
            assert _plausible(counts[criterion], int(passes.sum())), criterion
        assert result.privacy["epsilon_per_query"] == pytest.approx(1.0 * len(truth))  # the default
        assert result.privacy["period_spent"] >= result.privacy["epsilon_per_query"]
        with pytest.raises(GatewayError) as info:
            client.check(
                "target_discovery",
                _ids(federation, 70, 5),
                "target_discovery",
                DIBAO,
                "pol-3",
                approval_ref=DEV_APPROVAL_REF,
            )
    assert info.value.http_status == 403 and "cohort" in info.value.message


def test_bronze_counts_are_randomized_and_the_epsilon_budget_refuses_when_spent(federation, tmp_path):
    """A gateway whose settings give bronze little ε per criterion (slots flipped almost half the
    time) and a period budget of two queries: the counts are randomized end to end, two queries are
    answered, the third is refused (429, with when the budget renews) and spends nothing."""
    policies = tmp_path / "eps-policies"
    shutil.copytree(federation.policy_dir, policies)
    settings = policies / "settings.toml"
    text = settings.read_text()
    text = text.replace("bronze_epsilon_per_criterion = 1.0", "bronze_epsilon_per_criterion = 0.05")
    settings.write_text(text.replace("bronze_epsilon_per_period = 30.0", "bronze_epsilon_per_period = 0.3"))
    assert "bronze_epsilon_per_period = 0.3" in settings.read_text()
    assert "bronze_epsilon_per_criterion = 0.05" in settings.read_text()
    config = write_gateway_config(
        federation, config_path=federation.gateway_dir / "gw-eps.toml", policy_dir=str(policies)
    )
    url = start_gateway(federation, federation.supervisor, config_path=config, name="gw-eps")
    program = PROGRAMS.get("target_discovery")
    exact = 0
    with _client(federation, "caseworker_bronze", url) as client:
        for q in range(2):
            ids = _ids(federation, 500 + 20 * q, 20)
            result = client.check("target_discovery", ids, "target_discovery", DIBAO, f"eps-{q}",
                                  approval_ref=DEV_APPROVAL_REF)  # fmt: skip
            truth = oracle(federation, program, ids)
            counts = result.cohort_counts()
            for criterion, passes in truth.items():
                assert _plausible(counts[criterion], int(passes.sum())), criterion
                exact += counts[criterion].noisy_count == int(passes.sum())
            assert result.privacy["epsilon_per_query"] == pytest.approx(0.05 * len(truth))
            assert result.privacy["period_spent"] == pytest.approx(0.05 * len(truth) * (q + 1))
        # with p = 0.4875 each noisy count equals the truth with probability <= 0.18: all six, < 4e-5
        assert exact < 2 * len(program.criteria)
        with pytest.raises(GatewayError) as info:
            client.check("target_discovery", _ids(federation, 560, 20), "target_discovery", DIBAO, "eps-2",
                         approval_ref=DEV_APPROVAL_REF)  # fmt: skip
    assert info.value.http_status == 429 and info.value.code == "budget_exhausted"
    assert "privacy budget exhausted" in info.value.message and "civil_affairs" in info.value.message


def test_bronze_cohort_with_a_made_up_member_is_refused(federation):
    """The fake-member attack end to end: 9 registered people and one made-up (valid checksum) id."""
    from xgate.pseudonym import id_checksum

    body = "43990000000000077"
    made_up = body + id_checksum(body)
    with _client(federation, "caseworker_bronze") as client, pytest.raises(GatewayError) as info:
        client.check(
            "target_discovery", [*_ids(federation, 76, 9), made_up], "target_discovery", DIBAO, "pol-4",
            approval_ref=DEV_APPROVAL_REF,
        )  # fmt: skip
    assert info.value.http_status == 403 and "not every member is a person known to the civil register" in (
        info.value.message
    )
    assert "household" in info.value.message


def test_bronze_tier_may_not_run_dibao_at_all(federation):
    with _client(federation, "caseworker_bronze") as client, pytest.raises(GatewayError) as info:
        client.check("dibao", _ids(federation, 75, 12), "dibao", DIBAO, "pol-3b", approval_ref=DEV_APPROVAL_REF)
    assert info.value.http_status == 403 and "no permit" in info.value.message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"approval_ref": ""}, "baseline-core-needs-approval"),
        ({"legal_basis": "SOME-OTHER-LAW"}, "no permit"),
    ],
)
def test_gateway_policy_refusals_name_the_reason(federation, kwargs, fragment):
    args = {"legal_basis": DIBAO, "approval_ref": DEV_APPROVAL_REF, **kwargs}
    with _client(federation, "caseworker") as client, pytest.raises(GatewayError) as info:
        client.check(
            "dibao", _ids(federation, 80, 3), "dibao", args["legal_basis"], "pol-4", approval_ref=args["approval_ref"]
        )
    assert info.value.http_status == 403 and info.value.code == "policy_denied"
    assert fragment in info.value.message


def test_probing_budget_is_exhausted_after_three_checks_and_says_when_it_resets(federation):
    ids = _ids(federation, 90, 1)
    with _client(federation, "caseworker") as client:
        for i in range(3):
            client.check("dibao", ids, "dibao", DIBAO, f"pol-5-{i}", approval_ref=DEV_APPROVAL_REF)
        with pytest.raises(GatewayError) as info:
            client.check("dibao", ids, "dibao", DIBAO, "pol-5-x", approval_ref=DEV_APPROVAL_REF)
    error = info.value
    assert error.http_status == 429 and error.code == "budget_exhausted"
    resets = datetime.fromisoformat(error.details["resets_at"])
    assert timedelta(days=29) < resets - datetime.now(UTC) <= timedelta(days=30, minutes=5)


def test_consent_is_required_honoured_and_revocable(federation):
    """The consent manager signs and registers; the caseworker cannot create one; nodes verify."""
    from crypto.artefacts import sign_artefact
    from crypto.envelope import SigningKey

    national_id = _ids(federation, 100, 1)
    caseworker = {"Authorization": f"Bearer {federation.api_keys['caseworker']}"}
    manager = {"Authorization": f"Bearer {federation.api_keys['consent_manager']}"}
    with _client(federation, "caseworker") as client:
        pseudonym = client._pseudonymiser.pseudonym(national_id[0])
        with pytest.raises(GatewayError) as info:
            client.check(
                "income_certificate", national_id, "income_certificate", LEGAL_BASIS["income_certificate"], "pol-6"
            )
        assert info.value.http_status == 403 and "consent" in info.value.message
        now = datetime.now(UTC)
        body = {
            "ref": "cns_" + "e2e" + "x" * 19,
            "subject": pseudonym,
            "agency": "civil_affairs",
            "purpose": "income_certificate",
            "programs": ["income_certificate"],
            "valid_from": (now - timedelta(minutes=1)).isoformat(),
            "valid_until": (now + timedelta(days=30)).isoformat(),
            "max_uses": 2,
        }
        artefact = sign_artefact(body, SigningKey.load(federation.consent_manager_key))
        with httpx.Client(base_url=federation.gateway_url, verify=client._http._transport._pool._ssl_context) as http:
            refused = http.post("/v1/consents", headers=caseworker, json={"artefact": artefact})
            assert refused.status_code == 403, refused.text  # requesters never create consents
            created = http.post("/v1/consents", headers=manager, json={"artefact": artefact})
            assert created.status_code == 201, created.text
            ref = created.json()["ref"]
            assert http.get(f"/v1/consents/{ref}", headers=caseworker).json()["status"] == "active"
            result = client.check(
                "income_certificate",
                national_id,
                "income_certificate",
                LEGAL_BASIS["income_certificate"],
                "pol-7",
                consent_ref=ref,
            )
            truth = oracle(federation, PROGRAMS.get("income_certificate"), national_id)
            assert result.passes["income_below_certificate_line"][0] == truth["income_below_certificate_line"][0]
            assert http.delete(f"/v1/consents/{ref}", headers=caseworker).status_code == 403
            assert http.delete(f"/v1/consents/{ref}", headers=manager).status_code == 200
            with pytest.raises(GatewayError) as info:
                client.check(
                    "income_certificate",
                    national_id,
                    "income_certificate",
                    LEGAL_BASIS["income_certificate"],
                    "pol-8",
                    consent_ref=ref,
                )
            assert info.value.http_status == 403 and "revoked" in info.value.message


def test_node_refuses_what_the_gateway_allowed(federation, tmp_path):
    """The provider decides: a tax node whose own policy lacks the dibao agreement refuses."""
    from app.devfed import DevFederation

    strict = tmp_path / "strict-policies"
    shutil.copytree(federation.policy_dir, strict)
    (strict / "agreements" / "dibao-tax-monthly-income.cedar").unlink()
    config_text = federation.node_config("tax").read_text().replace(str(federation.policy_dir), str(strict))
    # A second tax node process needs its own audit log: one writer per log (audit/db.py lock).
    config_text = config_text.replace('"audit.sqlite"', '"audit-strict.sqlite"')
    assert "audit-strict.sqlite" in config_text
    strict_config = federation.node_dir("tax") / "node-strict.toml"
    strict_config.write_text(config_text)
    child = federation.supervisor.start("node-tax-strict", ["node", "serve", "--config", str(strict_config)])
    addresses = {a: f"127.0.0.1:{p}" for a, p in federation.node_ports.items()}
    addresses["tax"] = f"127.0.0.1:{child.port}"
    config = write_gateway_config(federation, addresses, config_path=federation.gateway_dir / "gw-strict.toml")
    url = start_gateway(federation, federation.supervisor, config_path=config, name="gw-strict")
    assert isinstance(federation, DevFederation)
    with _client(federation, "caseworker", url) as client, pytest.raises(GatewayError) as info:
        client.check("dibao", _ids(federation, 110, 3), "dibao", DIBAO, "pol-9", approval_ref=DEV_APPROVAL_REF)
    error = info.value
    assert error.http_status == 403 and error.code == "node_refused"
    assert "tax" in error.message and "no permit" in error.message


def test_consent_cli_grants_lists_and_revokes_for_the_subject(federation, tmp_path):
    """`xgate consent grant/list/revoke` with the consent manager's key, against the running gateway."""
    import json

    from typer.testing import CliRunner

    from app.cli import app

    runner = CliRunner()
    national_id = _ids(federation, 101, 1)[0]
    common = ["--gateway", federation.gateway_url, "--ca", str(federation.ca_cert)]
    env = {"XGATE_API_KEY": federation.api_keys["consent_manager"]}
    key = tmp_path / "unregistered.key"
    made = runner.invoke(app, ["consent", "keygen", "--name", "mydata", "--out", str(key)])
    assert made.exit_code == 0 and "[[consent_manager]]" in made.output and key.stat().st_mode & 0o077 == 0
    grant = [
        "consent", "grant", "--subject-id", national_id, "--pseudonym-key", str(federation.pseudonym_key),
        "--agency", "civil_affairs", "--purpose", "income_certificate", "--program", "income_certificate",
        "--days", "7", "--max-uses", "1", *common,
    ]  # fmt: skip
    refused = runner.invoke(app, [*grant, "--key", str(key)], env=env)  # a key not in consent_managers.toml
    assert refused.exit_code == 1 and "not signed by a registered signer" in refused.output
    as_caseworker = runner.invoke(
        app,
        [*grant, "--key", str(federation.consent_manager_key)],
        env={"XGATE_API_KEY": federation.api_keys["caseworker"]},
    )
    assert as_caseworker.exit_code == 1 and "only a consent manager" in as_caseworker.output
    granted = runner.invoke(app, [*grant, "--key", str(federation.consent_manager_key)], env=env)
    assert granted.exit_code == 0, granted.output
    view = json.loads(granted.output)
    assert view["status"] == "active" and view["max_uses"] == 1 and national_id not in granted.output
    listed = runner.invoke(
        app,
        ["consent", "list", "--subject-id", national_id, "--pseudonym-key", str(federation.pseudonym_key), *common],
        env=env,
    )
    assert listed.exit_code == 0 and [json.loads(x)["ref"] for x in listed.output.splitlines()] == [view["ref"]]
    revoked = runner.invoke(app, ["consent", "revoke", view["ref"], *common], env=env)
    assert revoked.exit_code == 0 and json.loads(revoked.output)["status"] == "revoked"


def test_approval_cli_and_the_gateway_refuse_self_issued_approvals(federation, tmp_path):
    """`xgate approval grant/list/revoke` with the approver's key; free text and spent or revoked approvals refused."""
    import json

    from typer.testing import CliRunner

    from app.cli import app

    runner = CliRunner()
    common = ["--gateway", federation.gateway_url, "--ca", str(federation.ca_cert)]
    env = {"XGATE_API_KEY": federation.api_keys["approver"]}
    ids = _ids(federation, 130, 3)
    with _client(federation, "caseworker") as client, pytest.raises(GatewayError) as info:
        client.check("dibao", ids[:1], "dibao", DIBAO, "apr-e2e", approval_ref="I-APPROVE-MYSELF")
    # Free text is not a reference at all (the REST edge); a well-formed one nobody registered is denied.
    assert info.value.http_status == 400 and info.value.message.startswith("approval_ref:")
    made_up = "apr_I-APPROVE-MYSELF-000000"[:26]
    with _client(federation, "caseworker") as client, pytest.raises(GatewayError) as info:
        client.check("dibao", ids[:1], "dibao", DIBAO, "apr-e2e", approval_ref=made_up)
    assert info.value.http_status == 403 and f"'{made_up}' names no registered approval" in info.value.message
    rogue = tmp_path / "rogue.key"
    made = runner.invoke(
        app, ["approval", "keygen", "--name", "ap-wu", "--agency", "civil_affairs", "--out", str(rogue)]
    )
    assert made.exit_code == 0 and "[[approver]]" in made.output
    grant = ["approval", "grant", "--agency", "civil_affairs", "--program", "dibao", "--case-id", "apr-e2e",
             "--max-subjects", "2", "--days", "7", *common]  # fmt: skip
    refused = runner.invoke(app, [*grant, "--key", str(rogue)], env=env)  # a key not in approvers.toml
    assert refused.exit_code == 1 and "not signed by a registered signer" in refused.output
    as_caseworker = runner.invoke(
        app, [*grant, "--key", str(federation.approver_key)], env={"XGATE_API_KEY": federation.api_keys["caseworker"]}
    )
    assert as_caseworker.exit_code == 1 and "registered by their approver" in as_caseworker.output
    granted = runner.invoke(app, [*grant, "--key", str(federation.approver_key)], env=env)
    assert granted.exit_code == 0, granted.output
    ref = json.loads(granted.output)["ref"]
    with _client(federation, "caseworker") as client:
        result = client.check("dibao", ids[:2], "dibao", DIBAO, "apr-e2e", approval_ref=ref)
        assert result.criteria  # answered, under the registered approval
        with pytest.raises(GatewayError) as spent:
            client.check("dibao", ids[2:], "dibao", DIBAO, "apr-e2e", approval_ref=ref)
        assert spent.value.http_status == 403 and "used up" in spent.value.message
        with pytest.raises(GatewayError) as other_case:
            client.check("dibao", ids[2:], "dibao", DIBAO, "apr-other", approval_ref=ref)
        assert "does not cover case 'apr-other'" in other_case.value.message
    listed = runner.invoke(app, ["approval", "list", *common], env=env)
    assert listed.exit_code == 0 and ref in listed.output and DEV_APPROVAL_REF in listed.output
    revoked = runner.invoke(app, ["approval", "revoke", ref, *common], env=env)
    assert revoked.exit_code == 0 and json.loads(revoked.output)["status"] == "revoked"
