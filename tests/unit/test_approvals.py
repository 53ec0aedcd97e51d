"""Approvals (issue 13, item 2): registered, signed, scoped; charged like consents; checked again at nodes."""

from __future__ import annotations

import base64
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from crypto.artefacts import Signer, sign_artefact
from crypto.envelope import SigningKey
from gateway.app import create_app
from gateway.services import Services
from nodes.policy import verify_approval
from policies.approvals import (
    APPROVAL_FORMAT,
    ApprovalBody,
    ApprovalRegistry,
    Approver,
    Approvers,
    check_approval_artefact,
    load_approvers,
    new_ref,
)
from protos.xgate.v1 import node_pb2
from xgate.errors import ConfigError, InvalidInput, PolicyDenied
from xgate.principal import Principal

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
APPROVER_KEY = SigningKey.generate("ap-test", "approver")
HRSS_APPROVER_KEY = SigningKey.generate("ap-hrss", "approver")


def _approver(key: SigningKey, *agencies: str) -> tuple[str, Approver]:
    signer = Signer.of(key.agency, base64.b64encode(key.public_raw).decode())
    return key.key_id, Approver(signer, agencies, ("case_supervisor",))


APPROVERS = dict([_approver(APPROVER_KEY, "civil_affairs", "hrss"), _approver(HRSS_APPROVER_KEY, "hrss")])
# A standing approval for unit tests of the decision point (every shipped program, any case id).
STANDING_REF = "apr_unit-test-standing-001"
SUBJECT = "abcdefghijklmnopqrstuvwxyz"
OTHER = "zyxwvutsrqponmlkjihgfedcba"


def approval(key: SigningKey = APPROVER_KEY, **change: Any) -> str:
    body: dict[str, Any] = {
        "ref": new_ref(),
        "approver": key.agency,
        "approver_role": "case_supervisor",
        "agencies": ["civil_affairs"],
        "programs": ["dibao"],
        "case_ids": ["C-1"],
        "max_subjects": 5,
        "valid_from": T0.isoformat(),
        "valid_until": (T0 + timedelta(days=365)).isoformat(),
    }
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    return sign_artefact(body, key, fmt=APPROVAL_FORMAT)


def standing_registry(path: Path) -> ApprovalRegistry:
    """A registry holding STANDING_REF: both agencies, every shipped program, any case, many subjects."""
    registry = ApprovalRegistry(path, approvers=APPROVERS)
    programs = ["dibao", "income_certificate", "pension_survival", "target_discovery", "unemployment_subsidy"]
    registry.register_signed(
        approval(
            ref=STANDING_REF,
            agencies=["civil_affairs", "hrss"],
            programs=programs,
            case_ids=None,
            case_id_prefix="",
            max_subjects=1_000_000,
        )
    )
    return registry


@pytest.fixture
def registry(tmp_path: Path) -> ApprovalRegistry:
    return ApprovalRegistry(tmp_path / "approvals.db", approvers=APPROVERS)


def _use(registry: ApprovalRegistry, ref: str, **change: Any) -> str:
    scope: dict[str, Any] = {
        "agency": "civil_affairs",
        "program": "dibao",
        "case_id": "C-1",
        "subjects": [SUBJECT],
        "now": NOW,
    }
    scope.update(change)
    return registry.reserve(ref, **scope)


def test_a_registered_approval_covers_its_scope_and_counts_subjects(registry: ApprovalRegistry) -> None:
    ref = registry.register_signed(approval()).ref
    first = _use(registry, ref, subjects=[SUBJECT, OTHER])
    assert first and registry.lookup(ref).uses == 2
    registry.commit(first)
    held = _use(registry, ref, subjects=[SUBJECT, OTHER, SUBJECT])
    assert registry.lookup(ref).uses == 5
    with pytest.raises(PolicyDenied, match="its 5 subjects are used up"):
        _use(registry, ref)
    assert registry.release(held) and registry.lookup(ref).uses == 2  # a failed check gives them back
    assert not registry.release(held)  # idempotent
    _use(registry, ref)


REFUSALS = [
    ("free text", lambda r, ref: _use(r, "I-APPROVE-MYSELF"), "'I-APPROVE-MYSELF' names no registered approval"),
    ("unknown ref", lambda r, ref: _use(r, new_ref()), "names no registered approval"),
    ("other agency", lambda r, ref: _use(r, ref, agency="hrss"), "given to another agency"),
    ("other program", lambda r, ref: _use(r, ref, program="income_certificate"), "does not cover program"),
    ("other case", lambda r, ref: _use(r, ref, case_id="C-2"), "does not cover case 'C-2'"),
    ("expired", lambda r, ref: _use(r, ref, now=T0 + timedelta(days=400)), "has expired"),
    ("not yet valid", lambda r, ref: _use(r, ref, now=T0 - timedelta(days=1)), "not yet valid"),
    ("too many at once", lambda r, ref: _use(r, ref, subjects=[SUBJECT] * 6), "at most 5 subjects"),
]


@pytest.mark.parametrize(("name", "call", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(registry: ApprovalRegistry, name: str, call: Any, reason: str) -> None:
    ref = registry.register_signed(approval()).ref
    with pytest.raises(PolicyDenied, match=reason):
        call(registry, ref)
    assert registry.lookup(ref).uses == 0  # a refusal charges nothing


def test_subject_list_scope_and_case_prefix(registry: ApprovalRegistry) -> None:
    ref = registry.register_signed(
        approval(subjects=[SUBJECT], max_subjects=None, case_ids=None, case_id_prefix="DB-2026-")
    ).ref
    held = _use(registry, ref, case_id="DB-2026-0042")
    assert held and registry.lookup(ref).uses == 0  # subject lists are not counted (the use is still leased)
    assert registry.commit(held)
    with pytest.raises(PolicyDenied, match="does not cover every subject"):
        _use(registry, ref, case_id="DB-2026-0042", subjects=[SUBJECT, OTHER])
    with pytest.raises(PolicyDenied, match="does not cover case"):
        _use(registry, ref, case_id="XX-2026-0042")


def test_revoked_approval_is_refused(registry: ApprovalRegistry) -> None:
    ref = registry.register_signed(approval()).ref
    registry.revoke(ref, NOW - timedelta(minutes=1))
    with pytest.raises(PolicyDenied, match="revoked by its approver"):
        _use(registry, ref)


def test_a_revocation_made_while_a_check_waited_for_the_lock_is_honoured(registry: ApprovalRegistry) -> None:
    """The check's `now` was read before it waited for the approval's lock; a revocation stamped
    after it is final all the same (review: before, the waiting check used the revoked approval)."""
    ref = registry.register_signed(approval()).ref
    registry.revoke(ref, NOW + timedelta(seconds=2))
    with pytest.raises(PolicyDenied, match="revoked by its approver"):
        _use(registry, ref)


def test_another_agency_learns_nothing_of_an_approvals_state(registry: ApprovalRegistry) -> None:
    """Refused for the agency before revocation or validity is told (review)."""
    ref = registry.register_signed(approval(agencies=["civil_affairs"])).ref
    registry.revoke(ref, NOW - timedelta(minutes=1))
    for now in (NOW, NOW + timedelta(days=999)):
        with pytest.raises(PolicyDenied, match="given to another agency, not 'hrss'"):
            _use(registry, ref, agency="hrss", now=now)


def test_registration_refuses_forged_unregistered_and_out_of_agency(registry: ApprovalRegistry) -> None:
    rogue = SigningKey.generate("ap-test", "approver")  # same name, unregistered key
    with pytest.raises(PolicyDenied, match="not signed by a registered signer"):
        registry.register_signed(approval(rogue))
    good = approval()
    with pytest.raises(PolicyDenied, match="signature does not verify"):
        registry.register_signed(good.replace('"max_subjects": 5', '"max_subjects": 5000'))
    with pytest.raises(PolicyDenied, match="not registered to approve for"):
        registry.register_signed(approval(HRSS_APPROVER_KEY, agencies=["civil_affairs"]))
    with pytest.raises(PolicyDenied, match="names another approver"):
        registry.register_signed(approval(approver="ap-hrss"))
    with pytest.raises(PolicyDenied, match="signed by another approver's key"):
        registry.register_signed(approval(), approver="ap-hrss")
    with pytest.raises(InvalidInput, match="exactly one of subjects and max_subjects"):
        registry.register_signed(approval(subjects=[SUBJECT]))
    with pytest.raises(InvalidInput, match="exactly one of case_ids and case_id_prefix"):
        registry.register_signed(approval(case_id_prefix="C-"))
    with pytest.raises(InvalidInput, match="the same pseudonym twice"):  # was registered as 10 subjects
        registry.register_signed(approval(subjects=[SUBJECT] * 10, max_subjects=None))
    # One registered before the rule still loads from the registry (else every lookup failed on it).
    stored = {"ref": new_ref(), "approver": "ap-test", "approver_role": "case_supervisor",
              "agencies": ["civil_affairs"], "programs": ["dibao"], "case_ids": ["C-1"], "subjects": [SUBJECT, SUBJECT],
              "valid_from": T0.isoformat(), "valid_until": (T0 + timedelta(days=1)).isoformat()}  # fmt: skip
    assert ApprovalBody.model_validate(stored, context={"stored": True}).subjects == (SUBJECT, SUBJECT)
    with pytest.raises(PolicyDenied, match="format must be xgate-approval/1"):  # a consent is not an approval
        registry.register_signed(approval().replace(APPROVAL_FORMAT, "xgate-consent/1"))
    registry.register_signed(good)
    with pytest.raises(InvalidInput, match="already registered"):
        registry.register_signed(good)


def test_count_is_exact_under_concurrent_checks(registry: ApprovalRegistry) -> None:
    ref = registry.register_signed(approval(max_subjects=10)).ref
    won: list[str] = []
    refused: list[str] = []

    def attempt() -> None:
        try:
            won.append(_use(registry, ref))
        except PolicyDenied:
            refused.append("x")

    threads = [threading.Thread(target=attempt) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 10 and len(refused) == 14 and registry.lookup(ref).uses == 10


def _node_request(text: str, ref: str, subjects: list[str], **context: str) -> node_pb2.EncryptRequest:
    fields = {
        "requester_agency": "civil_affairs",
        "program_id": "dibao",
        "case_id": "C-1",
        "approval_ref": ref,
        "approval_artefact": text,
    }
    fields.update(context)
    return node_pb2.EncryptRequest(context=node_pb2.RequestContext(**fields), pseudonyms=subjects)


def test_node_checks_the_forwarded_artefact(tmp_path: Path) -> None:
    (tmp_path / "approvers.toml").write_text(
        f'[[approver]]\nname = "ap-test"\nagencies = ["civil_affairs"]\nroles = ["case_supervisor"]\n'
        f'public_key = "{base64.b64encode(APPROVER_KEY.public_raw).decode()}"\n'
    )
    approvers = Approvers(tmp_path)
    text = approval(subjects=[SUBJECT], max_subjects=None)
    ref = text.split('"ref": "')[1].split('"')[0]
    verify_approval(_node_request(text, ref, [SUBJECT]), approvers, lambda: NOW)
    verify_approval(_node_request("", "", [SUBJECT]), approvers, lambda: NOW)  # no approval named: nothing to check
    cases = [
        (_node_request("", ref, [SUBJECT]), "carries no signed approval artefact"),
        (_node_request(text, new_ref(), [SUBJECT]), "another approval reference"),
        (_node_request(text, ref, [OTHER]), "does not cover every subject"),
        (_node_request(text, ref, [SUBJECT], case_id="C-9"), "does not cover case"),
        (_node_request(text, ref, [SUBJECT], requester_agency="hrss"), "another agency"),
        (_node_request(approval(HRSS_APPROVER_KEY), ref, [SUBJECT]), "not signed by a registered signer"),
    ]
    for request, reason in cases:
        with pytest.raises(PolicyDenied, match=reason):
            verify_approval(request, approvers, lambda: NOW)
    with pytest.raises(PolicyDenied, match="has expired"):
        check_approval_artefact(
            text, approvers.current(), ref=ref, agency="civil_affairs", program="dibao", case_id="C-1",
            subjects=[SUBJECT], now=T0 + timedelta(days=999),
        )  # fmt: skip


def test_approvers_file_is_validated(tmp_path: Path) -> None:
    assert load_approvers(tmp_path) == {}
    (tmp_path / "approvers.toml").write_text('[[approver]]\nname = "x"\nagencies = ["hrss"]\npublic_key = "AAAA"\n')
    with pytest.raises(ConfigError, match="needs exactly name, agencies, roles and public_key"):
        load_approvers(tmp_path)  # an approvers.toml from before roles: named, not half-read
    (tmp_path / "approvers.toml").write_text(
        '[[approver]]\nname = "x"\nagencies = []\nroles = ["case_supervisor"]\npublic_key = "AAAA"\n'
    )
    with pytest.raises(ConfigError, match="agencies must be a non-empty list"):
        load_approvers(tmp_path)
    for roles in ("[]", '["Case Supervisor"]', '"case_supervisor"'):
        (tmp_path / "approvers.toml").write_text(
            f'[[approver]]\nname = "x"\nagencies = ["hrss"]\nroles = {roles}\npublic_key = "AAAA"\n'
        )
        with pytest.raises(ConfigError, match="roles must be a non-empty list of role names"):
            load_approvers(tmp_path)


def test_an_approval_whose_approver_was_deregistered_or_narrowed_is_refused(tmp_path: Path) -> None:
    """Registered approvals are checked against the approvers registered now (review: the gateway
    kept honouring a removed key's approvals; only the nodes refused them)."""
    approvers = dict(APPROVERS)
    registry = ApprovalRegistry(tmp_path / "approvals.db", approvers=approvers)
    ref = registry.register_signed(approval()).ref
    _use(registry, ref)
    approvers[APPROVER_KEY.key_id] = replace(approvers[APPROVER_KEY.key_id], roles=("data_office",))
    with pytest.raises(PolicyDenied, match="not registered in the role 'case_supervisor'"):
        _use(registry, ref)
    del approvers[APPROVER_KEY.key_id]
    with pytest.raises(PolicyDenied, match="approval refused"):
        _use(registry, ref)


def test_an_approval_in_a_role_its_approver_is_not_registered_in_is_refused(registry: ApprovalRegistry) -> None:
    """The role is part of what the approver is registered for, not a word it may sign freely
    (review: any approver_role passed)."""
    with pytest.raises(PolicyDenied, match="not registered in the role 'minister'"):
        registry.register_signed(approval(approver_role="minister"))
    assert registry.register_signed(approval()).body.approver_role == "case_supervisor"


# -- the REST edge ---------------------------------------------------------------------------------
USERS = {
    "ap": Principal("ap-test", "data_office", "approver", "bronze"),
    "ap_hrss": Principal("ap-hrss", "data_office", "approver", "bronze"),
    "ca": Principal("cw-1", "civil_affairs", "caseworker", "gold"),
    "tax": Principal("tx-1", "tax", "caseworker", "gold"),
    "sec": Principal("so-1", "civil_affairs", "security_officer", "gold"),
    "adm": Principal("ad-1", "civil_affairs", "admin", "gold"),
}


def _authenticate(request: Request) -> Principal:
    return USERS[request.headers["x-test-user"]]


@pytest.fixture
def client(registry: ApprovalRegistry) -> TestClient:
    services = Services(authenticate=_authenticate, approvals=registry, clock=lambda: NOW)
    return TestClient(create_app(services))


@pytest.mark.parametrize("who", ["ca", "tax", "sec", "adm"])
def test_only_an_approver_registers_approvals(client: TestClient, who: str) -> None:
    r = client.post("/v1/approvals", json={"artefact": approval()}, headers={"x-test-user": who})
    assert r.status_code == 403 and "registered by their approver" in r.json()["message"]


def test_routes_register_read_list_revoke(client: TestClient) -> None:
    ap = {"x-test-user": "ap"}
    r = client.post("/v1/approvals", json={"artefact": approval()}, headers=ap)
    assert r.status_code == 201, r.text
    ref = r.json()["ref"]
    assert (
        r.json()["status"] == "active" and r.json()["max_subjects"] == 5 and r.json()["agencies"] == ["civil_affairs"]
    )
    # another approver cannot register ap-test's artefact as its own, nor revoke it
    other = client.post("/v1/approvals", json={"artefact": approval()}, headers={"x-test-user": "ap_hrss"})
    assert other.status_code == 403
    assert client.get(f"/v1/approvals/{ref}", headers={"x-test-user": "ca"}).status_code == 200
    assert client.get(f"/v1/approvals/{ref}", headers={"x-test-user": "tax"}).status_code == 403
    # another agency's approver reads neither the case id nor the scope of ap-test's approval
    foreign = client.get(f"/v1/approvals/{ref}", headers={"x-test-user": "ap_hrss"})
    assert foreign.status_code == 403 and "reserved to its approver" in foreign.json()["message"]
    assert client.get(f"/v1/approvals/{ref}", headers=ap).status_code == 200
    assert [v["ref"] for v in client.get("/v1/approvals", headers=ap).json()] == [ref]
    assert client.delete(f"/v1/approvals/{ref}", headers={"x-test-user": "ap_hrss"}).status_code == 403
    assert client.delete(f"/v1/approvals/{ref}", headers={"x-test-user": "ca"}).status_code == 403
    revoked = client.delete(f"/v1/approvals/{ref}", headers=ap)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert client.get("/v1/approvals/nonsense", headers=ap).status_code == 404


def test_training_approval_scope_rules() -> None:
    from policies.approvals import evaluate_training, parse_approval

    def body(**change: Any) -> ApprovalBody:
        return parse_approval(approval(**change), APPROVERS)[1]

    training = {"programs": [], "datasets": ["medical.claims_2025"], "max_subjects": None, "case_ids": ["job-1"]}
    scoped = body(**training)
    with pytest.raises(InvalidInput, match="at least one program"):
        body(**{**training, "datasets": []})
    with pytest.raises(InvalidInput, match="takes no subjects"):
        body(**{**training, "max_subjects": 3})
    with pytest.raises(PolicyDenied, match="names no registered approval"):
        evaluate_training(None, "free text", agency="civil_affairs", datasets=[], job_id="job-1", now=NOW)
    with pytest.raises(PolicyDenied, match="does not cover training job"):
        from policies.approvals import in_training_scope

        in_training_scope(scoped, agency="civil_affairs", datasets=["medical.claims_2025"], job_id="job-2", now=NOW)
    with pytest.raises(PolicyDenied, match="does not cover program"):  # a training approval opens no check
        from policies.approvals import in_scope

        in_scope(scoped, agency="civil_affairs", program="dibao", case_id="job-1", subjects=[SUBJECT], now=NOW)
    # ... nor a check approval a training job, even one touching no dataset an approval must name (review)
    for_checks = body(case_id_prefix="job-", case_ids=None)
    with pytest.raises(PolicyDenied, match="approves checks, not training"):
        in_training_scope(for_checks, agency="civil_affairs", datasets=[], job_id="job-1", now=NOW)


def test_cli_training_approval_body_validates() -> None:
    from client.approval_cli import approval_body
    from policies.approvals import ApprovalBody

    made = approval_body(
        ref=new_ref(), approver="ap-hrss", approver_role="data_office", agencies=["hrss"], programs=[],
        datasets=["medical.claims_2025"], valid_from=T0, days=30, case_id_prefix="job-",
    )  # fmt: skip
    body = ApprovalBody.model_validate(made)
    assert body.datasets == ("medical.claims_2025",) and body.programs == () and body.max_subjects is None
    check = approval_body(
        ref=new_ref(), approver="ap-hrss", approver_role="x", agencies=["hrss"], programs=["dibao"],
        valid_from=T0, days=1, case_ids=["C-1"], max_subjects=1,
    )  # fmt: skip
    assert "datasets" not in check  # a check approval's body is unchanged


def test_the_grant_command_names_what_is_wrong_before_anything_is_sent(tmp_path: Path) -> None:
    """It printed pydantic's last line, "For further information visit https://errors.pydantic.dev/..."."""
    from typer.testing import CliRunner

    from app.cli import app

    runner = CliRunner()
    key = tmp_path / "ap.key"
    assert (
        runner.invoke(
            app, ["approval", "keygen", "--name", "ap-test", "--agency", "civil_affairs", "--out", str(key)]
        ).exit_code
        == 0
    )
    grant = ["approval", "grant", "--key", str(key), "--agency", "civil_affairs", "--api-key", "x",
             "--gateway", "https://127.0.0.1:1"]  # fmt: skip
    both = runner.invoke(app, [*grant, "--program", "dibao", "--case-id", "C-1", "--case-id-prefix", "C-",
                               "--max-subjects", "3"])  # fmt: skip
    assert both.exit_code == 1 and "approval: name exactly one of case_ids and case_id_prefix" in both.output
    assert "pydantic" not in both.output and "could not reach" not in both.output  # refused before any call
    nothing = runner.invoke(app, [*grant, "--case-id", "C-1"])
    assert nothing.exit_code == 1 and "name at least one program (checks) or dataset (training)" in nothing.output
