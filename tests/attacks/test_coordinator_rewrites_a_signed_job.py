"""A coordinator running a job definition its analyst never signed.

Every node decides each job definition under its own policy and records its digest, but the
coordinator writes the definition the nodes see. It could lower `min_nodes` (and then leave
agencies out of a vertical alignment, learning per row how many nodes miss it), drop or add
features, raise the rounds, all within the node's policy: the node approved whatever came. With a
signing key registered for the analyst (principals.toml `signing_key`), the gateway and every
node with a policy directory now refuse a definition that is not exactly the one the analyst
signed (federated/signed_jobs.py), and any unsigned job run in the analyst's name. Positive
control: without a registered key, the rewritten job is approved.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from crypto.envelope import SigningKey
from federated.admission import LedgerAdmission, PolicyAdmission, admit_at_node
from federated.jobs import JobSpec
from federated.signed_jobs import sign_job
from policies.decision import PolicyEngine
from tests.unit.test_training_gateway import post, training_env
from tests.unit.training_support import job_body, write_region_stores, write_training_policies
from xgate.errors import PolicyDenied

ANALYST = "an-liu"


def _register(policies: Path, key: SigningKey | None = None, *, require: bool = False) -> Path:
    """The analyst's public key in the policy set's principals.toml (and optionally the setting)."""
    if key is not None:
        text = (policies / "principals.toml").read_text()
        entry = f'id = "{ANALYST}"\n'
        assert entry in text
        signing = f'signing_key = "{base64.b64encode(key.public_raw).decode()}"\n'
        (policies / "principals.toml").write_text(text.replace(entry, entry + signing, 1))
    if require:
        (policies / "settings.toml").write_text(
            (policies / "settings.toml")
            .read_text()
            .replace("require_signed_jobs = false", "require_signed_jobs = true")
        )
    return policies


def _job(job_id: str = "signed-1", **overrides: Any) -> JobSpec:
    return JobSpec.model_validate({**job_body(job_id, **overrides), "requester": ANALYST})


def _node(tmp_path: Path, policies: Path) -> tuple[PolicyAdmission, str, Path, Path]:
    ((agency, store, ledger),) = write_region_stores(tmp_path / "stores", [60])
    return PolicyAdmission(PolicyEngine.load(policies), ledger, store), agency, store, ledger


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_nodes", 1), ("rounds", 9), ("features", ("medical.annual_claims",)), ("purpose", "fraud_detection_v2")],
)
def test_a_node_refuses_a_definition_its_analyst_did_not_sign(tmp_path: Path, field: str, value: Any) -> None:
    key = SigningKey.generate("hrss", "job-signing")
    policies = _register(write_training_policies(tmp_path / "policies"), key)
    admission, agency, _, _ = _node(tmp_path, policies)
    signed = sign_job(_job(), key)
    rewritten = signed.model_copy(update={field: value})  # the analyst's signature kept
    decision = admission(rewritten, agency)
    assert not decision.approved and f"differs from what its requester signed: {field}" in decision.reason
    assert admission(signed, agency).approved  # the definition as signed


def test_positive_control_without_a_registered_key_the_rewritten_job_is_approved(tmp_path: Path) -> None:
    policies = write_training_policies(tmp_path / "policies")
    admission, agency, _, _ = _node(tmp_path, policies)
    assert admission(_job().model_copy(update={"min_nodes": 1}), agency).approved


def test_an_unsigned_job_in_the_analysts_name_is_refused_and_does_not_poison_the_id(tmp_path: Path) -> None:
    key = SigningKey.generate("hrss", "job-signing")
    policies = _register(write_training_policies(tmp_path / "policies"), key)
    admission, agency, _, ledger = _node(tmp_path, policies)
    decision = admission(_job(), agency)
    assert not decision.approved and f"its requester '{ANALYST}' has a registered signing key" in decision.reason
    with sqlite3.connect(ledger) as conn:  # not recorded: the digest leaves the signature out
        assert conn.execute("SELECT COUNT(*) FROM decisions WHERE job_id = 'signed-1'").fetchone()[0] == 0
    assert admission(sign_job(_job(), key), agency).approved  # the same definition, signed, later


def test_another_key_or_a_forged_signature_is_refused(tmp_path: Path) -> None:
    key, other = SigningKey.generate("hrss", "job-signing"), SigningKey.generate("hrss", "job-signing")
    policies = _register(write_training_policies(tmp_path / "policies"), key)
    admission, agency, _, _ = _node(tmp_path, policies)
    decision = admission(sign_job(_job(), other), agency)
    assert not decision.approved and "not signed by a registered signer" in decision.reason
    artefact = json.loads(sign_job(_job(), key).signature)
    artefact["body"]["min_nodes"] = 1  # the body edited under the analyst's signature
    forged = _job().model_copy(update={"min_nodes": 1, "signature": json.dumps(artefact)})
    decision = admission(forged, agency)
    assert not decision.approved and "signature does not verify" in decision.reason


def test_require_signed_jobs_refuses_any_unsigned_job(tmp_path: Path) -> None:
    policies = _register(write_training_policies(tmp_path / "policies"), require=True)
    admission, agency, _, _ = _node(tmp_path, policies)
    decision = admission(_job(), agency)
    assert not decision.approved and "requires signed training jobs" in decision.reason


def test_the_clientapp_guard_refuses_the_rewritten_job_from_the_run_config(tmp_path: Path) -> None:
    """What a node on its own machine runs for every message (admit_at_node), with the job as the
    coordinator's run config carries it."""
    key = SigningKey.generate("hrss", "job-signing")
    policies = _register(write_training_policies(tmp_path / "policies"), key)
    _, agency, store, ledger = _node(tmp_path, policies)
    rewritten = sign_job(_job(), key).model_copy(update={"min_nodes": 1})
    carried = JobSpec.model_validate_json(json.loads(json.dumps(rewritten.run_config(tmp_path)))["job-json"])
    with pytest.raises(PolicyDenied, match="differs from what its requester signed: min_nodes"):
        admit_at_node(carried, agency, ledger, store, policies, None)
    admit_at_node(sign_job(_job(), key), agency, ledger, store, policies, None)  # as signed: admitted


def test_the_gateway_refuses_an_unsigned_job_for_an_analyst_with_a_key_and_runs_a_signed_one(tmp_path: Path) -> None:
    key = SigningKey.generate("hrss", "job-signing")
    with training_env(tmp_path) as (client, service, log, runner):
        _register(tmp_path / "policies", key)
        service.policy = PolicyEngine.load(tmp_path / "policies")  # the gateway's; nodes load theirs
        r = post(client, "analyst", job_body("gw-unsigned"))
        assert r.status_code == 403 and "is not signed" in r.json()["message"], r.text
        refused = [rec for rec in log.records if rec.kind == "training_job_refused"][-1]
        assert refused.metadata["stage"] == "signature"
        signed = sign_job(_job("gw-signed"), key)
        body = {**job_body("gw-signed"), "signature": signed.signature}  # requester comes from authentication
        r = post(client, "analyst", body)
        assert r.status_code == 202, r.text
        runner.gate.set()
        assert runner.done.wait(30)
        status = client.get("/v1/training/jobs/gw-signed/status", headers={"x-user": "analyst"}).json()
        assert status["state"] == "completed", status


def test_an_approval_recorded_before_the_key_was_registered_does_not_let_the_rewrite_through(tmp_path: Path) -> None:
    """The coordinator gets its rewritten job approved while the analyst has no key yet (or under a
    ledger-only decision, which records no policy hash); once the key is registered, every admission
    checks the signature again, so neither recorded approval lets it run."""
    key = SigningKey.generate("hrss", "job-signing")
    policies = write_training_policies(tmp_path / "policies")
    _, agency, store, ledger = _node(tmp_path, policies)
    rewritten = _job().model_copy(update={"min_nodes": 1})
    admit_at_node(rewritten, agency, ledger, store, policies, None)  # approved: nobody has a key yet
    _register(policies, key)
    with pytest.raises(PolicyDenied, match=f"its requester '{ANALYST}' has a registered signing key"):
        admit_at_node(rewritten, agency, ledger, store, policies, None)
    admit_at_node(sign_job(_job(), key), agency, ledger, store, policies, None)  # what the analyst signed


def test_a_ledger_only_approval_does_not_satisfy_a_node_whose_policy_wants_a_signature(tmp_path: Path) -> None:
    from federated.admission import LedgerAdmission

    key = SigningKey.generate("hrss", "job-signing")
    policies = _register(write_training_policies(tmp_path / "policies"), key, require=True)
    admission, agency, store, ledger = _node(tmp_path, policies)
    rewritten = _job().model_copy(update={"min_nodes": 1})
    LedgerAdmission(ledger, store).configure([rewritten.purpose], {"claims_region0": 100.0})
    assert LedgerAdmission(ledger, store)(rewritten, agency).approved  # no policy hash recorded
    decision = admission(rewritten, agency)
    assert not decision.approved and "is not signed" in decision.reason


def test_the_coordinators_max_weight_cannot_override_the_jobs(tmp_path: Path) -> None:
    from flwr.app import Context, RecordDict

    from federated.horizontal_client import client_fn
    from xgate.errors import InvalidInput

    key = SigningKey.generate("hrss", "job-signing")
    policies = _register(write_training_policies(tmp_path / "policies"), key)
    _, agency, store, ledger = _node(tmp_path, policies)
    signed = sign_job(_job(max_weight=60), key)
    node_config = {"store": str(store), "agency": agency, "ledger": str(ledger), "policy_dir": str(policies)}
    run_config = {**signed.run_config(tmp_path), "max-weight": 1_000_000}
    with pytest.raises(InvalidInput, match="max-weight 1000000 is not the job's max_weight 60"):
        client_fn(Context(1, 1, node_config, RecordDict(), run_config))  # type: ignore[arg-type]
    client_fn(Context(1, 1, node_config, RecordDict(), {**run_config, "max-weight": 60}))  # type: ignore[arg-type]


def test_a_policy_edit_mid_run_neither_refuses_nor_recharges_a_decided_job(tmp_path: Path) -> None:
    """The ClientApp checks the signature at every message, but decides a definition once: an
    edit to the node's policy set (registering another user's key) during the run changes nothing
    for the job already approved and charged."""
    from federated.admission import LedgerAdmission

    key = SigningKey.generate("hrss", "job-signing")
    policies = _register(write_training_policies(tmp_path / "policies"), key)
    _, agency, store, ledger = _node(tmp_path, policies)
    admit_at_node(sign_job(_job(epsilon=1.0), key), agency, ledger, store, policies, None)
    job = sign_job(_job(epsilon=2.0, rounds=2), key)  # the analyst changed its job: decided (and charged) again
    admit_at_node(job, agency, ledger, store, policies, None)
    spent = LedgerAdmission(ledger, store).spent("medical.claims_2025")
    assert spent == pytest.approx(3.0)
    text = (policies / "principals.toml").read_text()
    other = base64.b64encode(SigningKey.generate("medical", "job-signing").public_raw).decode()
    (policies / "principals.toml").write_text(
        text.replace('id = "medical-analyst"\n', f'id = "medical-analyst"\nsigning_key = "{other}"\n', 1)
    )
    for _ in range(3):  # every later message of the run
        admit_at_node(job, agency, ledger, store, policies, None)
    assert LedgerAdmission(ledger, store).spent("medical.claims_2025") == spent > 0
    # decided again under the edited policy (a resubmission through the gateway): the same approval
    # key, so neither refused as "a different epsilon" nor charged twice
    again = PolicyAdmission(PolicyEngine.load(policies), ledger, store)(job, agency)
    assert again.approved and again.redecided == "node policy changed", again
    assert LedgerAdmission(ledger, store).spent("medical.claims_2025") == spent


FORBID = (
    '@id("revoke-medical-claims")\n'
    'forbid (principal, action == Action::"train", resource == Dataset::"medical.claims_2025");\n'
)


def test_a_node_that_revokes_its_permission_refuses_new_runs_of_an_approved_job(tmp_path: Path) -> None:
    """A definition already approved is not decided again at every message, but when the node's
    policy set changed since, its Cedar decision is taken again (uncharged): a revocation stops
    the coordinator starting new runs of the approved job; a permission granted later admits a job
    once refused, charged once."""
    from federated.admission import LedgerAdmission

    policies = write_training_policies(tmp_path / "policies")
    _, agency, store, ledger = _node(tmp_path, policies)
    job = _job(epsilon=1.0)
    admit_at_node(job, agency, ledger, store, policies, None)
    (policies / "agreements" / "zz-revoke.cedar").write_text(FORBID)
    with pytest.raises(PolicyDenied, match="the node's policy no longer permits it"):
        admit_at_node(job, agency, ledger, store, policies, None)
    (policies / "agreements" / "zz-revoke.cedar").unlink()
    admit_at_node(job, agency, ledger, store, policies, None)  # permitted again: the approval stands
    assert LedgerAdmission(ledger, store).spent("medical.claims_2025") == pytest.approx(1.0)


def test_a_refusal_the_policy_later_permits_is_decided_again_and_charged_once(tmp_path: Path) -> None:
    from federated.admission import LedgerAdmission

    policies = write_training_policies(tmp_path / "policies")
    (policies / "agreements" / "zz-revoke.cedar").write_text(FORBID)
    _, agency, store, ledger = _node(tmp_path, policies)
    job = _job(epsilon=1.0)
    with pytest.raises(PolicyDenied):
        admit_at_node(job, agency, ledger, store, policies, None)
    (policies / "agreements" / "zz-revoke.cedar").unlink()
    for _ in range(3):
        admit_at_node(job, agency, ledger, store, policies, None)
    assert LedgerAdmission(ledger, store).spent("medical.claims_2025") == pytest.approx(1.0)


def test_a_changed_definition_refused_then_permitted_again_keeps_its_own_charge(tmp_path: Path) -> None:
    """D0 approved (ε 1), then its changed definition D1 (ε 2, charged under its own key); D1 is
    refused under a revocation (which deletes its recorded charges) and later permitted again: it
    finds its own spend, so it is neither refused as 'a different epsilon' nor charged twice."""
    from federated.admission import LedgerAdmission

    policies = write_training_policies(tmp_path / "policies")
    admission, agency, store, ledger = _node(tmp_path, policies)
    assert admission(_job(epsilon=1.0), agency).approved
    changed = _job(epsilon=2.0, rounds=2)
    assert admission(changed, agency).approved
    (policies / "agreements" / "zz-revoke.cedar").write_text(FORBID)
    assert not PolicyAdmission(PolicyEngine.load(policies), ledger, store)(changed, agency).approved
    (policies / "agreements" / "zz-revoke.cedar").unlink()
    again = PolicyAdmission(PolicyEngine.load(policies), ledger, store)(changed, agency)
    assert again.approved, again
    assert LedgerAdmission(ledger, store).spent("medical.claims_2025") == pytest.approx(3.0)
    with sqlite3.connect(ledger) as conn:  # its further runs are charged against its own approval
        keys = {k for (k,) in conn.execute("SELECT approval_key FROM approved_charges WHERE job_id = 'signed-1'")}
    assert keys == {f"signed-1~{changed.digest()[:16]}"}


def test_a_broken_policy_set_refuses_the_job_with_a_reason_not_a_crash(tmp_path: Path) -> None:
    policies = write_training_policies(tmp_path / "policies")
    _, agency, store, ledger = _node(tmp_path, policies)
    admit_at_node(_job(), agency, ledger, store, policies, None)
    (policies / "principals.toml").write_text("[[users]\nbroken")
    with pytest.raises(PolicyDenied, match="its policy set"):
        admit_at_node(_job(), agency, ledger, store, policies, None)


def test_a_signed_job_past_its_valid_until_is_refused_and_its_end_cannot_be_moved(tmp_path: Path) -> None:
    """The analyst signed the job for a week; a coordinator running it again later (a replay of an
    old approval) is refused by every node at its first message, and moving or dropping the end
    breaks the signature. Positive control: before the end the same job runs."""
    key = SigningKey.generate("hrss", "job-signing")
    policies = _register(write_training_policies(tmp_path / "policies"), key)
    admission, agency, store, ledger = _node(tmp_path, policies)
    week = sign_job(_job("signed-week", valid_until="2099-01-01T00:00:00Z"), key)
    admit_at_node(week, agency, ledger, store, policies)  # within its time: decided, approved
    old = sign_job(_job("signed-old", valid_until="2020-01-01T00:00:00+08:00"), key)
    with pytest.raises(PolicyDenied, match="expired at 2020-01-01T00:00:00\\+08:00: its requester set it valid"):
        admit_at_node(old, agency, ledger, store, policies)
    for moved in ({"valid_until": "2099-01-01T00:00:00Z"}, {"valid_until": ""}):
        decision = admission(old.model_copy(update=moved), agency)
        assert not decision.approved and "differs from what its requester signed: valid_until" in decision.reason


def test_a_valid_until_without_an_offset_or_not_a_time_is_refused_when_read() -> None:
    from federated.jobs import parse_job
    from xgate.errors import InvalidInput

    with pytest.raises(InvalidInput, match="needs a UTC offset"):
        parse_job({**job_body("tt-1"), "valid_until": "2026-12-13T00:00:00"})
    with pytest.raises(InvalidInput, match="is not an ISO 8601 date and time"):
        parse_job({**job_body("tt-2"), "valid_until": "next week"})
    plain = _job("tt-3")
    before = plain.model_dump(
        mode="json",
        exclude={"encodings", "label_dp", "signature", "top_calibration", "valid_until", "vertical_scheme"},
    )
    canon = json.dumps(before, sort_keys=True, separators=(",", ":")).encode()
    assert plain.digest() == hashlib.sha256(canon).hexdigest()  # no end: the digest as before the field
    assert _job("tt-4", valid_until="2099-01-01T00:00:00Z").digest() != _job("tt-4").digest()


def _ledger_node(tmp_path: Path, **configure: Any) -> tuple[LedgerAdmission, str, Path, Path]:
    """A node admitting by its ledger alone (`xgate train allow`), no policy directory."""
    from tests.unit.training_support import PURPOSE

    ((agency, store, ledger),) = write_region_stores(tmp_path / "stores", [60])
    admission = LedgerAdmission(ledger, store)
    admission.configure([PURPOSE], {"claims_region0": 10.0}, **configure)
    return admission, agency, store, ledger


def test_a_ledger_only_node_that_trusts_the_analysts_key_refuses_a_rewritten_job(tmp_path: Path) -> None:
    key = SigningKey.generate("hrss", "job-signing")
    public = base64.b64encode(key.public_raw).decode()
    admission, agency, store, ledger = _ledger_node(tmp_path, signing_keys={ANALYST: public})
    signed = sign_job(_job(), key)
    assert admission(signed, agency).approved
    admit_at_node(signed, agency, ledger, store, None)  # every message of its runs
    rewritten = signed.model_copy(update={"min_nodes": 1})
    decision = admission(rewritten, agency)
    assert not decision.approved and "differs from what its requester signed: min_nodes" in decision.reason
    with pytest.raises(PolicyDenied, match="differs from what its requester signed: min_nodes"):
        admit_at_node(rewritten, agency, ledger, store, None)  # from the run config, at a ClientApp
    unsigned = admission(_job("unsigned-1"), agency)
    assert not unsigned.approved and "has a registered signing key" in unsigned.reason
    admit_at_node(signed, agency, ledger, store, None)  # the refusals recorded nothing: still runs


def test_positive_control_a_ledger_only_node_without_trusted_keys_approves_the_rewrite(tmp_path: Path) -> None:
    key = SigningKey.generate("hrss", "job-signing")
    admission, agency, store, ledger = _ledger_node(tmp_path)
    rewritten = sign_job(_job(), key).model_copy(update={"min_nodes": 1})
    assert admission(rewritten, agency).approved
    admit_at_node(rewritten, agency, ledger, store, None)


def test_a_ledger_only_node_requiring_signatures_refuses_unsigned_jobs(tmp_path: Path) -> None:
    admission, agency, _, _ = _ledger_node(tmp_path, require_signed_jobs=True)
    decision = admission(_job("unsigned-2"), agency)
    assert not decision.approved and "this node requires signed training jobs" in decision.reason


def test_a_run_under_way_when_the_end_passes_is_refused_at_its_next_message(tmp_path: Path) -> None:
    """Approved and running at a policy node and at a ledger-only node; once `valid_until` passes,
    the next message is refused at both, and a fresh admission decides and charges nothing."""
    import time
    from datetime import UTC, datetime, timedelta

    from policies.budgets import PrivacyLedger

    key = SigningKey.generate("hrss", "job-signing")
    policies = _register(write_training_policies(tmp_path / "policies"), key)
    admission, agency, store, ledger = _node(tmp_path / "policy-node", policies)
    ledger_admission, lagency, lstore, lledger = _ledger_node(tmp_path / "ledger-node")
    end = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    job = sign_job(_job("ending-soon", epsilon=1.0, valid_until=end), key)
    admit_at_node(job, agency, ledger, store, policies)
    assert ledger_admission(job, lagency).approved
    admit_at_node(job, lagency, lledger, lstore, None)
    spent = [PrivacyLedger(lg).spent("claims_region0") for lg in (ledger, lledger)]
    assert spent[1] == 1.0
    time.sleep(2.2)
    for site in ((agency, ledger, store, policies), (lagency, lledger, lstore, None)):
        with pytest.raises(PolicyDenied, match=r"expired at .*: its requester set it valid until then"):
            admit_at_node(job, *site)
    later = sign_job(_job("ended", epsilon=1.0, valid_until=end), key)
    assert not admission(later, agency).approved and not ledger_admission(later, lagency).approved
    assert [PrivacyLedger(lg).spent("claims_region0") for lg in (ledger, lledger)] == spent  # nothing charged


def test_the_gateway_refuses_an_expired_job_before_charging(tmp_path: Path) -> None:
    key = SigningKey.generate("hrss", "job-signing")
    with training_env(tmp_path) as (client, service, log, _):
        _register(tmp_path / "policies", key)
        service.policy = PolicyEngine.load(tmp_path / "policies")
        old = sign_job(_job("gw-expired", valid_until="2020-01-01T00:00:00Z"), key)
        body = {**job_body("gw-expired"), "valid_until": old.valid_until, "signature": old.signature}
        r = post(client, "analyst", body)
        assert r.status_code == 403 and "expired at 2020-01-01T00:00:00Z" in r.json()["message"], r.text
        refused = [rec for rec in log.records if rec.kind == "training_job_refused"][-1]
        assert refused.metadata["stage"] == "expired"


def test_a_policy_node_refuses_a_record_dp_job_that_cannot_train(tmp_path: Path) -> None:
    policies = write_training_policies(tmp_path / "policies")
    admission, agency, _, _ = _node(tmp_path, policies)
    tiny = _job("tiny-eps", dp={"epsilon": 0.05, "delta": 1e-6, "clip": 1.0, "unit": "record"})
    decision = admission(tiny, agency)
    assert not decision.approved and "cannot train: what each node releases before training" in decision.reason


def test_trusted_keys_are_kept_when_the_caps_change_and_clearing_them_revokes(tmp_path: Path) -> None:
    from tests.unit.training_support import PURPOSE

    key = SigningKey.generate("hrss", "job-signing")
    public = base64.b64encode(key.public_raw).decode()
    admission, agency, _, _ = _ledger_node(tmp_path, signing_keys={ANALYST: public}, require_signed_jobs=True)
    admission.configure([PURPOSE], {"claims_region0": 5.0})  # an administrator changing a cap only
    assert admission.signature_settings() == ([ANALYST], True, True)
    assert "is not signed" in admission(_job("unsigned-3"), agency).reason
    signed = sign_job(_job("signed-3"), key)
    assert admission(signed, agency).approved
    admission.configure([PURPOSE], {"claims_region0": 5.0}, signing_keys={}, require_signed_jobs=False)
    assert admission.signature_settings() == ([], True, False)
    assert "has no registered signing key" in admission(signed, agency).reason  # the removed key's jobs


def test_the_gateway_refuses_a_record_dp_job_that_cannot_train_before_charging(tmp_path: Path) -> None:
    with training_env(tmp_path) as (client, service, log, _):
        body = job_body("gw-tiny", dp={"epsilon": 0.05, "delta": 1e-6, "clip": 1.0, "unit": "record"})
        r = post(client, "analyst", body)
        assert r.status_code == 403 and "cannot train: what each node releases" in r.json()["message"], r.text
        refused = [rec for rec in log.records if rec.kind == "training_job_refused"][-1]
        assert refused.metadata["stage"] == "dp"
        from policies.budgets import PrivacyLedger

        assert PrivacyLedger(service.ledger.path).spent("medical.claims_2025") == 0.0  # nothing charged
