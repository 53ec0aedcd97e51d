"""POST /v1/training/jobs in process: refusals (401/403/409/429/400/503), the worker thread with a
stand-in runner (real node-side PolicyAdmission), status access, and event -> audit record mapping."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from audit.records import TRAINING_KINDS, AuditRecord
from federated.events import make_event
from federated.jobs import JobSpec, parse_job
from gateway.app import create_app
from gateway.services import Services
from gateway.training_audit import EVENT_KINDS, actor_of, record_for_event
from gateway.training_service import TrainingNode, TrainingService
from policies.budgets import PrivacyLedger
from policies.decision import PolicyEngine
from tests.unit.training_support import job_body, write_region_stores, write_training_policies
from xgate.errors import NodeUnavailable, PolicyDenied, Unauthenticated
from xgate.principal import Principal

USERS = {
    "analyst": Principal("an-liu", "hrss", "analyst", "gold"),
    "medical": Principal("medical-analyst", "medical", "analyst", "silver"),
    "caseworker": Principal("cw-zhang", "civil_affairs", "caseworker", "gold"),
    "officer": Principal("so-zhao", "civil_affairs", "security_officer", "gold"),
    "hrss-admin": Principal("hrss-admin", "hrss", "admin", "gold"),
    "tax-admin": Principal("tax-admin", "tax", "admin", "gold"),
    "impostor": Principal("an-liu", "hrss", "analyst", "bronze"),  # differs from the registry
}
ACTOR = actor_of("an-liu", "hrss", "analyst")
HEX = "ab" * 32


class Log:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def append(self, record: AuditRecord) -> None:
        AuditRecord.parse(record.canonical())  # what the store would accept
        self.records.append(record)

    def kinds(self, job_id: str) -> list[str]:
        return [r.kind for r in self.records if r.request_id == job_id]


class FakeRunner:
    """Stands in for run_job: real admission, scripted events; `gate` holds the job 'running'."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.done = threading.Event()
        self.federation = SimpleNamespace(procs={}, closed=0, close=self._closed)

    def _closed(self) -> None:
        self.federation.closed += 1
        self.gate.set()  # processes gone: the run ends

    def __call__(self, job: JobSpec, nodes: list[Any], *, job_dir: Path, admission: Any, on_event: Any,
                 on_federation: Any) -> None:  # fmt: skip
        try:
            on_federation(self.federation)
            on_event(make_event(job.job_id, "job_submitted", job_digest=job.digest()))
            refused = []
            for n in nodes:
                d = admission(job, n.agency)
                on_event(make_event(job.job_id, "job_approved" if d.approved else "job_refused", agency=n.agency,
                                    reason=d.reason, epsilon=d.epsilon))  # fmt: skip
                refused += [] if d.approved else [f"{n.agency}: {d.reason}"]
            if refused:
                raise PolicyDenied(f"job '{job.job_id}' refused: {'; '.join(refused)}")
            (job_dir / "status.json").write_text(json.dumps({"state": "running"}))
            on_event(make_event(job.job_id, "round_completed", round=1, participants=[11, 12],
                                agencies=["region0", "region1"], aggregate_sha256=HEX))  # fmt: skip
            assert self.gate.wait(20)
            if self.federation.closed:
                raise NodeUnavailable("federation", "processes stopped")
            on_event(make_event(job.job_id, "job_completed", model_sha256=HEX, auc=0.75, epsilon=None))
            (job_dir / "status.json").write_text(json.dumps({"state": "completed", "evaluation": {"auc": 0.75}}))
        finally:
            self.done.set()


@contextlib.contextmanager
def training_env(tmp_path: Path, **service: Any) -> Iterator[tuple[TestClient, TrainingService, Log, FakeRunner]]:
    """A TrainingService (two regional stores, cap 3.0) behind the REST app; `service` adds arguments."""
    policies = write_training_policies(tmp_path / "policies", cap=3.0)
    nodes = [TrainingNode(a, s, ledger) for a, s, ledger in write_region_stores(tmp_path, [60, 60])]
    log, runner = Log(), FakeRunner()
    training = TrainingService(
        policy=PolicyEngine.load(policies),
        ledger=PrivacyLedger(tmp_path / "state" / "privacy.sqlite"),
        jobs_dir=tmp_path / "state" / "jobs",
        nodes=nodes,
        audit_log=log,
        node_policy_dir=policies,
        runner=runner,
        **service,
    )

    def authenticate(request: Request) -> Principal:
        who = USERS.get(request.headers.get("x-user", ""))
        if who is None:
            raise Unauthenticated("missing or unknown API key")
        return who

    app = create_app(Services(authenticate=authenticate, training=training))
    with TestClient(app) as client:
        yield client, training, log, runner
    runner.gate.set()
    training.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, TrainingService, Log, FakeRunner]]:
    with training_env(tmp_path) as made:
        yield made


def post(client: TestClient, user: str | None, body: Any) -> Any:
    headers = {"x-user": user, "Content-Type": "application/json"} if user else {"Content-Type": "application/json"}
    return client.post("/v1/training/jobs", content=json.dumps(body), headers=headers)


def test_refusals_before_anything_runs(env: Any) -> None:
    client, service, log, _ = env
    assert post(client, None, job_body("r-0")).status_code == 401
    r = post(client, "caseworker", job_body("r-1"))
    assert r.status_code == 403 and "no permit matched" in r.json()["message"]
    r = post(client, "analyst", job_body("r-2", purpose="dibao"))
    assert r.status_code == 403 and "no permit matched" in r.json()["message"]
    r = post(client, "analyst", job_body("r-3", legal_basis="SAR-2014-art-12"))
    assert r.status_code == 403 and "Dataset::medical.claims_2025" in r.json()["message"]
    r = post(client, "impostor", job_body("r-4"))
    assert r.status_code == 403 and "registry" in r.json()["message"]
    r = post(client, "analyst", job_body("r-5", epsilon=5.0))  # cap 3
    assert r.status_code == 429 and r.json()["error"] == "budget_exhausted"
    assert r.json()["details"]["dataset"] == "medical.claims_2025"
    body = job_body("r-6")
    del body["legal_basis"]
    r = post(client, "analyst", body)
    assert r.status_code == 400 and r.json()["message"].startswith("legal_basis")
    r = client.post(
        "/v1/training/jobs", content=b"{not json", headers={"x-user": "analyst", "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    # Nested deeper than the parser's stack, or far larger than any job: refused, never a 500.
    deep = b"[" * 100_000 + b"]" * 100_000  # 200 kB, within the job body limit
    r = client.post(
        "/v1/training/jobs", content=deep, headers={"x-user": "analyst", "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_input"
    r = client.post(
        "/v1/training/jobs",
        content=b" " * 300_000 + b"{}",
        headers={"x-user": "analyst", "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert post(client, "analyst", {**job_body("r-7"), "requester": "medical-analyst"}).status_code == 403
    assert service.active is None and not (service.jobs_dir / "r-1").exists()
    refused = [r for r in log.records if r.kind == "training_job_refused"]
    stages = [r.metadata["stage"] for r in refused]
    assert stages == ["policy", "policy", "policy", "identity", "budget"]
    assert all(r.decision == "deny" and r.policy_set_hash for r in refused)
    assert PrivacyLedger(service.ledger.path).spent("medical.claims_2025") == 0.0


def test_accepted_job_runs_in_the_background(env: Any) -> None:
    client, service, log, runner = env
    r = post(client, "analyst", job_body("ok-1", epsilon=2.0))
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status_url"] == "/v1/training/jobs/ok-1/status" == r.headers["location"]
    assert accepted["decision"]["policy_ids"] == ["train-medical-claims"] and accepted["decision"]["epsilon"] == 2.0
    # The job's entries carry its job id; its submission names the REST request id the caller got.
    (submitted,) = [x for x in log.records if x.kind == "training_job_submitted" and x.request_id == "ok-1"]
    assert submitted.metadata["http_request_id"] == r.headers["x-request-id"]

    busy = post(client, "medical", job_body("ok-2"))  # one job at a time
    assert busy.status_code == 409 and busy.json()["error"] == "training_busy" and busy.headers["retry-after"]
    # Another agency's analyst or admin gets what a job that does not exist gets (no existence
    # oracle); the requester's own agency's admin and security officers see it.
    for outsider in ("medical", "tax-admin", "caseworker"):
        assert client.get(accepted["status_url"], headers={"x-user": outsider}).status_code == 404
    assert client.get(accepted["status_url"], headers={"x-user": "hrss-admin"}).status_code == 200
    assert client.get(accepted["status_url"], headers={"x-user": "officer"}).status_code == 200
    assert (
        client.get(
            "/v1/training/jobs/ghost-9/status", headers={"x-user": "analyst", "Content-Type": "application/json"}
        ).status_code
        == 404
    )

    runner.gate.set()
    assert runner.done.wait(20)
    service._thread.join(10)
    status = client.get(
        accepted["status_url"], headers={"x-user": "analyst", "Content-Type": "application/json"}
    ).json()
    assert status["state"] == "completed" and status["requester"] == "an-liu" and status["rounds"] == 1
    assert status["gateway_decision"]["datasets"] == ["medical.claims_2025"]
    assert service.active is None

    kinds = log.kinds("ok-1")
    assert kinds == [
        "training_job_submitted", "training_job_approved", "training_node_approved", "training_node_approved",
        "training_round_completed", "training_job_completed",
    ]  # fmt: skip
    node = next(r for r in log.records if r.kind == "training_node_approved")
    assert node.policy_ids == ("train-medical-claims",) and node.metadata["epsilon"] == "2.0"
    mine = [r for r in log.records if r.request_id == "ok-1"]
    assert all(r.actor.user == "an-liu" and r.purpose == "fraud_detection" for r in mine)
    # ε charged at the gateway and at each node's own ledger
    assert PrivacyLedger(service.ledger.path).spent("medical.claims_2025") == 2.0
    assert all(PrivacyLedger(n.ledger).spent("medical.claims_2025") == 2.0 for n in service.nodes)

    assert post(client, "analyst", job_body("ok-1", epsilon=2.0)).status_code == 409  # id used
    r = post(client, "analyst", job_body("ok-3", epsilon=1.5))  # 2.0 + 1.5 > 3
    assert r.status_code == 429


def test_node_refusal_is_recorded_and_ends_the_job(env: Any, tmp_path: Path) -> None:
    client, service, log, runner = env
    # Node region1 already spent its budget elsewhere: it refuses, though the gateway approved.
    PrivacyLedger(service.nodes[1].ledger).spend("medical.claims_2025", "other-job", 2.5, cap=3.0)
    runner.gate.set()
    assert post(client, "analyst", job_body("nr-1", epsilon=1.0)).status_code == 202
    assert runner.done.wait(20)
    service._thread.join(10)
    status = client.get(
        "/v1/training/jobs/nr-1/status", headers={"x-user": "analyst", "Content-Type": "application/json"}
    ).json()
    assert status["state"] == "refused" and "region1" in status["reason"]
    kinds = log.kinds("nr-1")
    assert kinds[-2:] == ["training_node_refused", "training_job_refused"]
    last = log.records[-1]
    assert last.metadata["stage"] == "node_admission" and "exhausted" in str(last.metadata["reason"])


def test_shutdown_stops_the_running_job_and_records_it(env: Any) -> None:
    client, service, log, runner = env
    assert post(client, "analyst", job_body("sd-1")).status_code == 202
    for _ in range(200):  # until the job is 'running' (its processes exist)
        if "training_round_completed" in log.kinds("sd-1"):
            break
        threading.Event().wait(0.05)
    service.close(timeout_s=10)
    assert runner.federation.closed == 1 and runner.done.is_set() and service.active is None
    status = client.get(
        "/v1/training/jobs/sd-1/status", headers={"x-user": "analyst", "Content-Type": "application/json"}
    ).json()
    assert status["state"] == "failed" and "processes stopped" in status["reason"]
    assert log.kinds("sd-1")[-1] == "training_job_failed"
    busy = post(client, "analyst", job_body("sd-2"))  # a closing gateway takes no new job
    assert busy.status_code == 409


def test_unconfigured_gateway_answers_503(tmp_path: Path) -> None:
    service = TrainingService(policy=None, ledger=PrivacyLedger(tmp_path / "l"), jobs_dir=tmp_path, nodes=[],
                              audit_log=None)  # fmt: skip
    app = create_app(Services(authenticate=lambda request: USERS["analyst"], training=service))
    with TestClient(app) as client:
        assert post(client, "analyst", job_body("u-1")).status_code == 503


# -- event -> record ---------------------------------------------------------------------------------


def _job() -> JobSpec:
    return parse_job({**job_body("map-1", epsilon=1.0), "requester": "an-liu"})


def test_every_mapped_kind_is_a_registered_training_kind() -> None:
    assert set(EVENT_KINDS.values()) <= TRAINING_KINDS
    assert {"training_job_submitted", "training_job_approved", "training_job_refused"} <= TRAINING_KINDS


@pytest.mark.parametrize(
    ("event", "kind", "digests", "metadata"),
    [
        ({"event": "round_completed", "round": 2, "participants": [3, 4], "agencies": ["a", "b"],
          "aggregate_sha256": HEX}, "training_round_completed", {"aggregate": HEX},
         {"round": 2, "participants": (3, 4), "agencies": ("a", "b")}),
        ({"event": "dp_spent", "rounds": 3, "epsilon": 0.9871234567, "delta": 1e-5, "noise_multiplier": 2.5},
         "training_dp_spent", {}, {"rounds": 3, "epsilon": "0.9871234567", "delta": "1e-05"}),
        ({"event": "aligned", "subjects": 1000, "nodes": [1, 2], "aligned_sha256": HEX}, "training_aligned",
         {"aligned": HEX}, {"aligned_subjects": 1000}),
        ({"event": "job_completed", "model_sha256": HEX, "auc": 0.5, "epsilon": None}, "training_job_completed",
         {"model": HEX}, {"auc": "0.5", "epsilon": None}),
        ({"event": "node_dropped", "round": 1, "node_id": 7, "agency": "region2", "reason": "timeout"},
         "training_node_dropped", {}, {"agency": "region2", "reason": "timeout"}),
        ({"event": "server_error", "reason": "boom"}, "training_job_failed", {}, {"reason": "boom"}),
        ({"event": "something_new", "count": 3}, "training_event", {}, {"event": "something_new", "count": 3}),
    ],
)  # fmt: skip
def test_event_mapping(event: dict[str, Any], kind: str, digests: dict[str, str], metadata: dict[str, Any]) -> None:
    record = record_for_event({"ts": "2026-03-01T02:00:00+00:00", "job_id": "map-1", **event}, _job(), ACTOR)
    assert record is not None and record.kind == kind and record.request_id == "map-1"
    assert record.purpose == "fraud_detection" and record.legal_basis == "SIL-2010-art-87"
    assert dict(record.digests) == digests
    assert {k: record.metadata[k] for k in metadata} == metadata
    assert record.time.isoformat().startswith("2026-03-01T02:00:00")
    assert AuditRecord.parse(record.canonical()) == record


def test_decisions_carry_policy_facts_and_personal_data_never_lands() -> None:
    approved = record_for_event(
        {"event": "job_approved", "agency": "region0", "reason": "approved", "epsilon": 1.0,
         "policy_ids": ["train-medical-claims"], "policy_set_hash": HEX, "datasets": ["medical.claims_2025"]},
        _job(), ACTOR,
    )  # fmt: skip
    assert approved is not None and approved.decision == "allow" and approved.policy_set_hash == HEX
    assert approved.policy_ids == ("train-medical-claims",) and approved.metadata["datasets"] == (
        "medical.claims_2025",
    )
    assert record_for_event({"event": "job_submitted"}, _job(), ACTOR) is None  # the gateway records it
    leaky = record_for_event(
        {"event": "job_failed", "income": 3, "national_id": "x", "nested": {"a": 1}, "bad_sha256": "zz",
         "reason": "subject 11010519491231002X failed"},
        _job(), ACTOR,
    )  # fmt: skip
    assert leaky is not None and leaky.metadata["dropped_fields"] == 4
    assert "income" not in leaky.metadata and leaky.metadata["reason"] == "[redacted]"
    assert b"11010519491231002X" not in leaky.canonical()


def test_cli_gateway_submission_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from app.train_cli import app

    monkeypatch.delenv("XGATE_API_KEY", raising=False)
    job = tmp_path / "job.toml"
    job.write_text('job_id = "cli-1"\n')
    runner = CliRunner()
    url = ["--gateway", "http://127.0.0.1:9"]
    res = runner.invoke(app, ["submit", "--job", str(job), *url, "--nodes", str(job)])
    assert res.exit_code == 1 and "drop --nodes" in res.output
    res = runner.invoke(app, ["submit", "--job", str(job), *url])
    assert res.exit_code == 1 and "--api-key" in res.output
    res = runner.invoke(app, ["submit", "--job", str(job), *url, "--api-key", "k"])
    assert res.exit_code == 1 and "invalid job" in res.output  # validated locally before any request
    res = runner.invoke(app, ["submit", "--job", str(job)])
    assert res.exit_code == 1 and "--nodes is required" in res.output


def test_cli_local_nodes_admit_under_their_policy_dir(tmp_path: Path) -> None:
    import tomli_w
    from typer.testing import CliRunner

    from app.train_cli import app

    policies = write_training_policies(tmp_path / "policies", cap=3.0)
    nodes = write_region_stores(tmp_path, [40, 40])
    nodes_file = tmp_path / "nodes.toml"
    nodes_file.write_text(
        tomli_w.dumps({"nodes": [{"agency": a, "store": str(s), "ledger": str(led), "policy_dir": str(policies)}
                                 for a, s, led in nodes]})
    )  # fmt: skip
    job = tmp_path / "job.toml"
    job.write_text(tomli_w.dumps({**job_body("cli-local", epsilon=5.0), "requester": "an-liu"}))
    res = CliRunner().invoke(app, ["submit", "--job", str(job), "--nodes", str(nodes_file), "--root", str(tmp_path)])
    assert res.exit_code == 1 and "refused" in res.output and "exhausted" in res.output  # ε 5 > cap 3
    assert not (tmp_path / "cli-local" / "logs").exists()  # refused before any process started
