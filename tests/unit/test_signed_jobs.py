"""Signed training jobs (federated/signed_jobs.py): the rule, the registry field and the CLI."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.train_cli import app
from crypto.envelope import SigningKey
from federated.jobs import JobSpec, load_job
from federated.signed_jobs import sign_job, signature_problem, signed_body
from policies.loader import UserEntry, load_directory
from tests.unit.training_support import job_body, write_training_policies
from xgate.errors import ConfigError

KEY = SigningKey.generate("hrss", "job-signing")


def _user(key: SigningKey | None = KEY, user: str = "an-liu") -> UserEntry:
    public = base64.b64encode(key.public_raw).decode() if key is not None else None
    return UserEntry(id=user, agency="hrss", role="analyst", tier="gold", signing_key=public)


def _job(**overrides: object) -> JobSpec:
    return JobSpec.model_validate({**job_body("sj-1"), "requester": "an-liu", **overrides})


def test_signing_leaves_the_digest_and_the_definition_alone() -> None:
    job = _job()
    signed = sign_job(job, KEY)
    assert signed.digest() == job.digest() and signed_body(signed) == signed_body(job)
    assert "signature" not in signed_body(signed)
    assert json.loads(signed.signature)["format"] == "xgate-training-job/1"
    assert signature_problem(signed, _user(), required=False) is None


def test_a_job_is_signed_in_its_requesters_name() -> None:
    with pytest.raises(ValueError, match="set requester first"):
        sign_job(_job(requester=""), KEY)


def test_unsigned_jobs_run_only_for_users_without_a_key_and_without_the_setting() -> None:
    assert signature_problem(_job(), _user(None), required=False) is None
    assert signature_problem(_job(), None, required=False) is None
    assert "requires signed training jobs" in str(signature_problem(_job(), _user(None), required=True))
    assert "has a registered signing key" in str(signature_problem(_job(), _user(), required=False))


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        ("not json", "artefact is not JSON"),
        ('{"format": "xgate-consent/1", "key_id": "x", "body": {}, "signature": ""}', "format must be"),
        ("[]", "exactly format, key_id, body and signature"),
    ],
)
def test_a_malformed_signature_is_refused_naming_what_is_wrong(signature: str, why: str) -> None:
    problem = signature_problem(_job(signature=signature), _user(), required=False)
    assert problem is not None and "its signature is not its requester's" in problem and why in problem


def test_a_signed_job_needs_its_requesters_registered_key() -> None:
    signed = sign_job(_job(), KEY)
    assert "has no registered signing key" in str(signature_problem(signed, _user(None), required=False))
    # another user (with a key of its own) presenting an-liu's signed definition as its own job
    theirs = signed.model_copy(update={"requester": "medical-analyst"})
    other = _user(SigningKey.generate("medical", "job-signing"), "medical-analyst")
    assert "not signed by a registered signer" in str(signature_problem(theirs, other, required=False))
    # the right key, but the requester field changed under it
    assert "differs from what its requester signed: requester" in str(
        signature_problem(theirs, _user(KEY, "medical-analyst"), required=False)
    )


def test_the_registry_refuses_a_signing_key_that_is_not_an_ed25519_public_key(tmp_path: Path) -> None:
    for bad, why in (("not base64!", "not base64"), (base64.b64encode(b"x" * 31).decode(), "32 bytes")):
        policies = write_training_policies(tmp_path / f"p{len(bad)}")
        text = (
            (policies / "principals.toml")
            .read_text()
            .replace('id = "an-liu"\n', f'id = "an-liu"\nsigning_key = "{bad}"\n')
        )
        (policies / "principals.toml").write_text(text)
        with pytest.raises(ConfigError, match=why):
            load_directory(policies)


def test_keygen_and_sign_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["keygen", "--user", "an-liu", "--out", str(tmp_path / "an.key")])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("signing_key = "))
    public = line.split('"')[1]
    assert (tmp_path / "an.key").stat().st_mode & 0o777 == 0o600
    res = runner.invoke(app, ["keygen", "--user", "an-liu", "--out", str(tmp_path / "an.key")])
    assert res.exit_code == 1 and "never overwritten" in res.output
    job_file = tmp_path / "job.toml"
    import tomli_w

    job_file.write_text(tomli_w.dumps(job_body("cli-1")))
    out = tmp_path / "signed.toml"
    res = runner.invoke(
        app,
        ["sign", "--job", str(job_file), "--key", str(tmp_path / "an.key"), "--requester", "an-liu", "--out", str(out)],
    )
    assert res.exit_code == 0 and "signed job cli-1 for an-liu" in res.output, res.output
    signed = load_job(out)
    user = UserEntry(id="an-liu", agency="hrss", role="analyst", tier="gold", signing_key=public)
    assert signed.requester == "an-liu" and signature_problem(signed, user, required=False) is None
    res = runner.invoke(
        app,
        [
            "sign",
            "--job",
            str(job_file),
            "--key",
            str(tmp_path / "an.key"),
            "--requester",
            "no spaces",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 1 and "requester" in res.output
    base = ["sign", "--job", str(job_file), "--key", str(tmp_path / "an.key"), "--requester", "an-liu"]
    res = runner.invoke(app, [*base, "--out", str(out), "--valid-until", "2099-01-01T00:00:00Z"])
    assert res.exit_code == 0, res.output
    ending = load_job(out)
    assert ending.valid_until == "2099-01-01T00:00:00Z" and signature_problem(ending, user, required=False) is None
    res = runner.invoke(app, [*base, "--out", str(out), "--valid-until", "soon"])
    assert res.exit_code == 1 and "valid_until 'soon' is not an ISO 8601 date and time" in res.output
    res = runner.invoke(app, [*base, "--out", str(out), "--valid-until", "2020-01-01T00:00:00Z"])
    assert res.exit_code == 1 and "is already past: nodes would refuse it" in res.output
    job_file.write_text(tomli_w.dumps(job_body("cli-2")) + "valid_until = 2099-01-01T00:00:00Z\n")  # unquoted
    assert load_job(job_file).valid_until == "2099-01-01T00:00:00+00:00"


def test_updating_a_principal_keeps_its_signing_key(tmp_path: Path) -> None:
    from app.principals import register_principal

    path = tmp_path / "principals.toml"
    public = base64.b64encode(KEY.public_raw).decode()
    path.write_text(
        f'[[users]]\nid = "an-liu"\nagency = "hrss"\nrole = "analyst"\ntier = "gold"\nsigning_key = "{public}"\n'
    )
    assert register_principal(path, "an-liu", "hrss", "analyst", "silver")
    assert register_principal(path, "cw-new", "civil_affairs", "caseworker", "gold")  # a new one, no key
    text = path.read_text()
    assert f'signing_key = "{public}"' in text and 'tier = "silver"' in text and text.count("signing_key") == 1


def test_a_job_with_the_most_features_signs_and_verifies() -> None:
    features = [f"medical.feature_{i:03d}_with_a_long_descriptive_name" for i in range(512)]
    signed = sign_job(_job(features=features), KEY)
    assert len(signed.signature) > 16 * 1024  # past what a consent artefact may be
    assert signature_problem(signed, _user(), required=False) is None


def test_a_signature_nested_past_the_parsers_stack_is_refused_not_a_traceback() -> None:
    problem = signature_problem(_job(signature="[" * 100_000), _user(), required=False)
    assert problem is not None and "artefact is not JSON" in problem


def test_a_field_the_signer_did_not_know_passes_only_at_its_default() -> None:
    from crypto.artefacts import sign_artefact
    from federated.signed_jobs import JOB_FORMAT

    job = _job()
    older = {k: v for k, v in signed_body(job).items() if k != "label_dp"}  # signed before label_dp existed
    as_older = job.model_copy(update={"signature": sign_artefact(older, KEY, JOB_FORMAT)})
    assert signature_problem(as_older, _user(), required=False) is None
    changed = as_older.model_copy(update={"label_dp": 1.0})
    assert "differs from what its requester signed: label_dp" in str(signature_problem(changed, _user(), False))


def test_sign_needs_a_requester() -> None:
    res = CliRunner().invoke(app, ["sign", "--job", "j.toml", "--key", "k", "--requester", "", "--out", "o.toml"])
    assert res.exit_code == 1 and "--requester" in res.output and "Traceback" not in res.output


def test_the_shipped_policy_set_requires_every_job_signed() -> None:
    """Secure by default (THREAT_MODEL F22): a federation that starts from the shipped policy set
    (`xgate policy init`) refuses an unsigned job even in the name of an analyst without a key."""
    from policies.decision import DEFAULT_POLICY_DIR, PolicyEngine

    engine = PolicyEngine.load(DEFAULT_POLICY_DIR)
    assert engine.require_signed_jobs is True
    problem = signature_problem(_job(), _user(key=None), engine.require_signed_jobs)
    assert problem is not None and "requires signed training jobs" in problem
