"""The console's JSON API in-process (no browser): roles, tamper tolerance, verdicts, verify-log,
alerts, federation, policies, training, static files, and the loud no-Chromium path."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from audit import index as audit_index
from audit.checkpoints import Cosigner, Signer, generate_key
from audit.store import AuditLog
from audit.testing import pseudonym, record
from gateway.app import create_app
from gateway.routes.console import CSP
from gateway.services import Services
from policies.budgets import PrivacyLedger
from policies.decision import DEFAULT_POLICY_DIR, PolicyEngine
from xgate.errors import NodeUnavailable, Unauthenticated
from xgate.principal import Principal

ORIGIN = "xgate.gateway/audit"
USERS = {
    "officer": Principal("so-zhao", "civil_affairs", "security_officer", "gold"),
    "admin": Principal("ad-sun", "civil_affairs", "admin", "gold"),
    "caseworker": Principal("cw-zhang", "civil_affairs", "caseworker", "gold"),
}
AUDIT_ROUTES = ["/v1/audit/entries?mode=tolerant", "/v1/audit/entries/0?mode=tolerant", "/v1/audit/checkpoints",
                "/v1/audit/alerts?mode=tolerant", "/v1/audit/verify-log", "/v1/audit/log-key"]  # fmt: skip
OTHER_ROUTES = ["/v1/policies/agreements", "/v1/training/jobs",
                "/v1/policies/who-can?data_element=tax.monthly_income"]  # fmt: skip
TOLERANT = {"mode": "tolerant"}
CONSOLE = {"mode": "tolerant", "order": "desc"}  # what the console's pages ask for


def authenticate(request: Request) -> Principal:
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    if token not in USERS:
        raise Unauthenticated("missing or unknown API key")
    return USERS[token]


@dataclass
class FakeNodes:
    down: tuple[str, ...] = ("medical",)

    def agencies(self) -> list[str]:
        return ["medical", "tax"]

    async def health(self, agency: str, deadline_s: float = 2.0) -> Any:
        if agency in self.down:
            raise NodeUnavailable(agency, "connection refused")
        return SimpleNamespace(status="serving", version="0.1.0", subjects=42)

    async def describe(self, agency: str, deadline_s: float = 2.0) -> Any:
        if agency in self.down:
            raise NodeUnavailable(agency, "connection refused")
        element = SimpleNamespace(id="tax.monthly_income", type="int", unit="CNY", classification="important")
        return SimpleNamespace(elements=[element], computations=["he-encrypt/bfv"], he_params_id="bfv-8192")


@dataclass
class Env:
    client: TestClient
    log: AuditLog
    state: Services
    tmp: Path

    def get(self, path: str, who: str = "officer", **kw: Any) -> Any:
        return self.client.get(path, headers={"Authorization": f"Bearer {who}"}, **kw)

    def post(self, path: str, who: str = "officer", **kw: Any) -> Any:
        return self.client.post(path, headers={"Authorization": f"Bearer {who}"}, **kw)

    def tamper(self, index: int) -> None:
        conn = sqlite3.connect(self.log.path)
        (data,) = conn.execute("SELECT data FROM entries WHERE idx=?", (index,)).fetchone()
        conn.execute("UPDATE entries SET data=? WHERE idx=?", (bytes(data).replace(b"cw-001", b"cw-00X"), index))
        conn.commit()
        conn.close()


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.load(DEFAULT_POLICY_DIR)


@pytest.fixture
def env(tmp_path: Path, engine: PolicyEngine) -> Iterator[Env]:
    key = generate_key()
    log = AuditLog.open(tmp_path / "audit.sqlite", signer=Signer(ORIGIN, key), origin=ORIGIN)
    witness = Cosigner("xgate.node.tax/witness", generate_key())
    log.append_many([record(i) for i in range(6)])
    log.append_many([record(10 + i, decision="deny", metadata={"reason": "policy_denied"}) for i in range(5)])
    cp = log.publish_checkpoint()
    log.add_cosignature(cp.checkpoint.size, witness.cosign(cp.checkpoint, int(time.time())).text())
    log.append(record(99))  # after the checkpoint: the unsigned tail
    state = tmp_path / "state"
    services = Services(authenticate=authenticate, audit_log=log, policy=engine, nodes=FakeNodes(),
                        jobs_dir=state / "jobs", privacy_ledger=state / "privacy.sqlite",
                        public_key=key.public_key(), witnesses=[witness.verifier()])  # fmt: skip
    try:
        yield Env(TestClient(create_app(services)), log, services, tmp_path)
    finally:
        log.close()


@pytest.mark.parametrize("route", AUDIT_ROUTES + OTHER_ROUTES)
def test_console_endpoints_refuse_unauthenticated_and_caseworkers(env: Env, route: str) -> None:
    size = env.log.size
    assert env.client.get(route).status_code == 401
    r = env.get(route, who="caseworker")
    assert r.status_code == 403 and r.json()["error"] == "policy_denied"
    assert env.log.size == size  # a refused read reads nothing and records nothing here


@pytest.mark.parametrize("route", AUDIT_ROUTES)
def test_admins_are_refused_the_audit_log_by_policy(env: Env, route: str) -> None:
    r = env.get(route, who="admin")
    assert r.status_code == 403 and "access denied" in r.json()["message"]


@pytest.mark.parametrize("route", OTHER_ROUTES)
def test_admins_may_use_the_operator_pages(env: Env, route: str) -> None:
    assert env.get(route, who="admin").status_code == 200


def test_whoami_names_the_caller_and_whether_the_console_is_open_to_them(env: Env) -> None:
    assert env.get("/v1/whoami").json()["console_allowed"] is True
    who = env.get("/v1/whoami", who="caseworker").json()
    assert (who["user"], who["role"], who["console_allowed"]) == ("cw-zhang", "caseworker", False)


def test_entries_filter_page_and_record_the_read(env: Env) -> None:
    r = env.get("/v1/audit/entries", params={**CONSOLE, "decision": "deny", "limit": 2}).json()
    assert r["total"] == 5 and len(r["entries"]) == 2 and r["tree_size"] == 12
    assert all(e["record"]["decision"] == "deny" and e["reason"] == "policy_denied" for e in r["entries"])
    assert [e["index"] for e in r["entries"]] == [10, 9]  # newest first
    assert env.get("/v1/audit/entries", params={**CONSOLE, "q": "req-00000003"}).json()["total"] == 1
    subject = pseudonym(3)
    assert [
        e["index"] for e in env.get("/v1/audit/entries", params={**CONSOLE, "subject": subject}).json()["entries"]
    ] == [3]
    read = env.log.entries(kind="audit_read", limit=10)[-1].record
    assert read.metadata["route"] == "entries" and read.subjects == (subject,)


def test_subject_filter_finds_entries_the_lookup_index_has_not_reached(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the console's own SQL read only the lookup index and missed fresh entries."""
    monkeypatch.setattr(audit_index, "IDLE_S", 3600.0)  # the writer never idles long enough to index
    fresh, first = [record(40 + i) for i in range(3)], env.log.size
    env.log.append_many(fresh)
    conn = sqlite3.connect(env.log.path)
    upto = int(conn.execute("SELECT value FROM meta WHERE key='indexed_upto'").fetchone()[0])
    conn.close()
    assert upto <= first  # the index lags: the fresh entries are above its mark
    for i, rec in enumerate(fresh):
        subject, index = pseudonym(40 + i), first + i
        for mode in ("tolerant", "strict"):
            # (each read names the subject too: the officer's audit_read entries are left out by kind)
            r = env.get("/v1/audit/entries", params={"mode": mode, "subject": subject, "kind": rec.kind}).json()
            assert [e["index"] for e in r["entries"]] == [index] and r["total"] == 1
        by_request = env.get("/v1/audit/entries", params={**CONSOLE, "request_id": rec.request_id}).json()
        assert [e["index"] for e in by_request["entries"]] == [index]


def test_one_url_per_resource_the_console_copies_are_gone(env: Env) -> None:
    for old in ("/v1/console/entries", "/v1/console/whoami", "/v1/console/checkpoints", "/v1/federation/nodes"):
        assert env.get(old).status_code == 404


@pytest.mark.parametrize(
    "params",
    [{"subject": "not-a-pseudonym"}, {"decision": "maybe"}, {"limit": 0}, {"order": "sideways"},
     {"q": "personal id 110101199003071234"}],
)  # fmt: skip
def test_entries_refuse_bad_filters(env: Env, params: dict[str, Any]) -> None:
    assert env.get("/v1/audit/entries", params={**CONSOLE, **params}).status_code == 400


def test_entry_detail_verdicts_verified_pending_and_altered(env: Env) -> None:
    ok = env.get("/v1/audit/entries/2", params=TOLERANT).json()
    assert ok["server_verdict"]["status"] == "verified" and ok["intact"]
    assert ok["checkpoint"]["size"] == 11 and len(ok["inclusion_proof"]) > 0 and ok["data_b64"]
    assert env.get("/v1/audit/entries/11", params=TOLERANT).json()["server_verdict"]["status"] == "pending"
    assert env.get("/v1/audit/entries/10000", params=TOLERANT).status_code == 404
    env.tamper(2)
    bad = env.get("/v1/audit/entries/2", params=TOLERANT).json()
    assert bad["server_verdict"]["status"] == "not_verified" and not bad["intact"]
    failed = {c["name"] for c in bad["server_verdict"]["checks"] if c["ok"] is False}
    assert failed == {"Leaf hash", "Inclusion proof"}
    assert bad["record"]["actor"]["user"] == "cw-00X"  # shown as stored, flagged
    listing = env.get("/v1/audit/entries", params={**CONSOLE, "order": "asc", "limit": 5}).json()["entries"]
    assert [e["intact"] for e in listing] == [True, True, False, True, True]  # the page still loads


def test_log_key_is_served_for_browser_signature_checks(env: Env) -> None:
    k = env.get("/v1/audit/log-key").json()
    assert k["origin"] == ORIGIN and len(k["key_id_hex"]) == 8 and k["public_key_b64"]


def test_checkpoint_history_verifies_signatures_and_cosignatures(env: Env) -> None:
    r = env.get("/v1/audit/checkpoints").json()
    (cp,) = r["checkpoints"]
    assert cp["size"] == 11 and cp["signature"]["ok"] is True
    assert [(c["witness"], c["verified"]["ok"]) for c in cp["cosignatures"]] == [("xgate.node.tax/witness", True)]
    env.state.witnesses = ()
    assert env.get("/v1/audit/checkpoints").json()["checkpoints"][0]["cosignatures"][0]["verified"]["ok"] is None


def _verify(env: Env) -> dict[str, Any]:
    assert env.post("/v1/audit/verify-log").status_code == 200
    assert env.state.verification is not None
    env.state.verification.wait(60)
    status: dict[str, Any] = env.get("/v1/audit/verify-log").json()
    return status


def test_verify_whole_log_passes_then_fails_listing_every_altered_entry(env: Env) -> None:
    ok = _verify(env)
    assert ok["state"] == "passed" and ok["scanned"] == ok["total"] >= 12 and ok["report"]["checkpoints"] == 1
    env.tamper(1)
    env.tamper(4)
    bad = _verify(env)
    assert bad["state"] == "failed" and bad["altered"] == [1, 4]
    assert bad["error"]["details"]["index"] == 1 and "altered" in bad["error"]["message"]
    results = [e.record.metadata for e in env.log.entries(kind="admin_action", limit=100)]
    assert {m.get("result") for m in results if m["route"] == "verify_log_result"} == {"passed", "failed"}


def test_verify_whole_log_needs_the_log_key(env: Env) -> None:
    env.state.verification = None
    r = env.post("/v1/audit/verify-log")
    assert r.status_code == 500 and "public key" in r.json()["message"]
    assert env.get("/v1/audit/verify-log").json()["state"] == "unavailable"


def test_alerts_show_the_entries_behind_them_and_skip_altered_ones(env: Env) -> None:
    (alert,) = [
        a for a in env.get("/v1/audit/alerts", params=TOLERANT).json()["alerts"] if a["rule"] == "repeated_denials"
    ]
    assert alert["user"] == "cw-001" and [e["index"] for e in alert["entries"]] == [6, 7, 8, 9, 10]
    env.tamper(7)
    r = env.get("/v1/audit/alerts", params=TOLERANT).json()
    assert r["altered"] == [7] and not [a for a in r["alerts"] if a["rule"] == "repeated_denials"]


def test_nodes_show_callers_health_only_and_officers_everything(env: Env) -> None:
    r = env.get("/v1/nodes", who="caseworker").json()
    nodes = {n["agency"]: n for n in r["nodes"]}
    assert nodes["tax"] == {"agency": "tax", "health": {"status": "serving", "version": "0.1.0"}}  # no count
    assert nodes["medical"]["health"]["status"] == "unreachable" and "certificates_note" not in r
    assert env.client.get("/v1/nodes").status_code == 401


def test_federation_shows_health_elements_and_an_unreachable_node(env: Env) -> None:
    r = env.get("/v1/nodes").json()
    nodes = {n["agency"]: n for n in r["nodes"]}
    assert nodes["tax"]["health"]["status"] == "serving" and nodes["tax"]["last_contact"]
    assert nodes["tax"]["elements"][0]["id"] == "tax.monthly_income"
    assert nodes["medical"]["health"]["status"] == "unreachable" and nodes["medical"]["last_contact"] is None
    assert "no federation directory" in r["certificates_note"]


def test_certificates_come_from_the_signed_directory_only(env: Env, tmp_path: Path) -> None:
    from crypto import pki

    ca = tmp_path / "ca"
    pki.init_ca(ca, "test CA")
    pki.issue(ca, "node", "tax", tmp_path / "out", days=10)
    env.state.federation_directory, env.state.ca_cert = ca / "federation.json", ca / "ca.cert.pem"
    cert = {n["agency"]: n for n in env.get("/v1/nodes").json()["nodes"]}["tax"]["certificate"]
    assert cert["status"] == "expiring" and 9 < cert["days_left"] <= 10
    doc = json.loads((ca / "federation.json").read_text())
    doc["entries"][0]["not_after"] = "2099-01-01T00:00:00+00:00"  # a forged expiry breaks the CA signature
    (ca / "federation.json").write_text(json.dumps(doc))
    r = env.get("/v1/nodes").json()
    assert "refused" in r["certificates_note"] and r["nodes"][1]["certificate"] is None


def test_policies_agreements_who_can_and_explain(env: Env) -> None:
    a = env.get("/v1/policies/agreements").json()
    ids = {p["id"]: p for p in a["policies"]}
    assert ids["dibao-tax-monthly-income"]["agreement"] and ids["baseline-core-needs-approval"]["effect"] == "forbid"
    assert any(e["id"] == "tax.monthly_income" for e in a["elements"])
    w = env.get("/v1/policies/who-can", params={"data_element": "tax.monthly_income"}).json()
    assert "cw-zhang" in {u for g in w["grants"] for u in g["registered_users"]}
    body = {"principal": "cw-zhang", "action": "check", "resources": ["DataElement::tax.monthly_income"],
            "context": {"purpose": "dibao", "legal_basis": "SAR-2014-art-12", "case_id": "C-1",
                        "at": "2026-03-02T11:00:00+08:00"}}  # fmt: skip
    yes = env.post("/v1/policies/explain", json=body).json()
    assert yes["allowed"] and yes["items"][0]["policies"]
    body["context"]["legal_basis"] = "SAR-2014-art-99"
    no = env.post("/v1/policies/explain", json=body).json()
    assert not no["allowed"] and any("no permit matched" in r for r in no["reasons"])
    failing = [c for p in no["items"][0]["policies"] for c in p["conditions"] if c["ok"] is False]
    assert any("legal_basis" in c["text"] and "SAR-2014-art-99" in c["actual"] for c in failing)


@pytest.mark.parametrize(
    "body",
    [{}, {"principal": "cw-zhang", "action": "fly", "resources": ["Program::dibao"]},
     {"principal": "cw-zhang", "resources": ["Nothing::x"]},
     {"principal": "cw-zhang", "resources": ["Program::dibao"], "context": {"at": "yesterday"}},
     {"principal": "cw-zhang", "resources": ["Program::dibao"], "context": {"at": "2026-03-02T11:00:00"}},
     {"principal": "cw-zhang", "resources": ["Program::dibao"], "context": {"colour": "red"}},
     {"principal": "cw-zhang", "resources": ["Program::dibao"] * 21}],
)  # fmt: skip
def test_explain_refuses_malformed_questions(env: Env, body: dict[str, Any]) -> None:
    assert env.post("/v1/policies/explain", json=body).status_code == 400


def test_training_jobs_curves_and_privacy_budget(env: Env) -> None:
    jobs = env.tmp / "state" / "jobs"
    done, running = jobs / "fraud-h1", jobs / "risk-v1"
    done.mkdir(parents=True)
    running.mkdir()
    (done / "status.json").write_text(json.dumps({"state": "completed", "updated_at": 1.0, "evaluation": {"auc": 0.9}}))
    spec = {"mode": "horizontal", "rounds": 2, "purpose": "fraud_detection"}
    (done / "model.json").write_text(json.dumps({"job": spec, "dp": {"epsilon": 1.5}}))
    (done / "report.json").write_text(json.dumps({"curve": [{"round": 1, "loss": 0.6}, {"round": 2, "loss": 0.5}]}))
    (running / "events.jsonl").write_text(
        json.dumps({"event": "job_submitted", "purpose": "risk", "mode": "vertical"}) + "\n"
        + json.dumps({"event": "round_completed", "round": 1, "loss": 0.7}) + "\n" + '{"event": "round_comp'
    )  # fmt: skip
    PrivacyLedger(env.tmp / "state" / "privacy.sqlite").spend("medical.claims_2025", "fraud-h1", 1.5, 8.0)
    r = env.get("/v1/training/jobs").json()
    by_id = {j["job_id"]: j for j in r["jobs"]}
    assert by_id["fraud-h1"]["epsilon"] == 1.5 and by_id["fraud-h1"]["curve"][-1]["loss"] == 0.5
    assert by_id["risk-v1"]["rounds_done"] == 1 and by_id["risk-v1"]["spec"]["mode"] == "vertical"
    budget = {b["dataset"]: b for b in r["budgets"]}["medical.claims_2025"]
    assert budget["spent"] == 1.5 and budget["remaining"] == 6.5 and budget["jobs"][0]["job_id"] == "fraud-h1"
    assert env.get("/v1/training/jobs/risk-v1").json()["events"][-1]["event"] == "round_completed"
    assert env.get("/v1/training/jobs/..%2Fetc").status_code == 404
    assert env.get("/v1/training/jobs/nope-job").status_code == 404


def test_static_console_is_served_with_a_strict_csp(env: Env) -> None:
    r = env.client.get("/console/")
    assert r.status_code == 200 and "xgate console" in r.text
    assert r.headers["content-security-policy"] == CSP and "unsafe-inline" not in CSP
    assert r.headers["x-frame-options"] == "DENY"
    assert env.client.get("/console/js/merkle.js").headers["content-type"].startswith("text/javascript")
    assert env.client.get("/console/../routes/console.py").status_code == 404


def test_without_chromium_the_browser_tests_say_loudly_that_they_did_not_run() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "XGATE_CHROMIUM": "/nonexistent/chromium"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "tests/browser/test_console_browser.py", "-k", "rfc6962"],
        cwd=root, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:]
    assert "BROWSER TESTS DID NOT RUN: chromium not found" in out.stdout
    assert "1 skipped" in out.stdout
