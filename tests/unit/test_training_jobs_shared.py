"""Training jobs behind the state store (gateway/training_jobs.py): a job accepted by one replica is
visible through the other (status, the officer's list and detail), and its id cannot be used again
at any replica. Two TrainingService instances with their own job directories share one store, as
two gateway processes share the database; the store's claim is also raced on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.services import Services
from gateway.training_jobs import TRAINING_JOB_MIGRATIONS, TrainingJobStore
from gateway.training_service import TrainingNode, TrainingService
from policies.budgets import PrivacyLedger
from policies.decision import PolicyEngine
from tests.postgres import reset_component
from tests.unit.test_training_gateway import USERS, FakeRunner, Log, post
from tests.unit.training_support import job_body, write_region_stores, write_training_policies
from xgate.db import PostgresDatabase, migrate
from xgate.errors import JobExists, Unauthenticated
from xgate.principal import Principal


def _authenticate(request: Request) -> Principal:
    who = USERS.get(request.headers.get("x-user", ""))
    if who is None:
        raise Unauthenticated("missing or unknown API key")
    return who


@pytest.fixture
def two_replicas(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient, FakeRunner, TrainingService]]:
    policies = write_training_policies(tmp_path / "policies", cap=3.0)
    nodes = [TrainingNode(a, s, ledger) for a, s, ledger in write_region_stores(tmp_path, [60, 60])]
    shared = tmp_path / "shared" / "training_jobs.sqlite"
    runners, services, clients = [FakeRunner(), FakeRunner()], [], []
    for k, name in enumerate(("a", "b")):
        service = TrainingService(
            policy=PolicyEngine.load(policies),
            ledger=PrivacyLedger(tmp_path / name / "privacy.sqlite"),
            jobs_dir=tmp_path / name / "jobs",
            nodes=nodes,
            audit_log=Log(),
            node_policy_dir=policies,
            runner=runners[k],
            jobs=TrainingJobStore(shared, replica=name),
        )
        services.append(service)
        clients.append(
            TestClient(
                create_app(
                    Services(
                        authenticate=_authenticate,
                        training=service,
                        jobs_dir=service.jobs_dir,
                        policy=service.policy,
                        privacy_ledger=service.ledger,
                    )
                )
            )
        )
    for c in clients:
        c.__enter__()
    try:
        yield clients[0], clients[1], runners[0], services[0]
    finally:
        for runner in runners:
            runner.gate.set()
        for c in clients:
            c.__exit__(None, None, None)
        for s in services:
            s.close()


def test_a_job_accepted_by_one_replica_is_visible_through_the_other(two_replicas: Any) -> None:
    at_a, at_b, runner, service_a = two_replicas
    accepted = post(at_a, "analyst", job_body("shared-1", epsilon=1.0))
    assert accepted.status_code == 202, accepted.text
    status_url = accepted.json()["status_url"]
    runner.gate.set()
    assert runner.done.wait(20)
    service_a._thread.join(10)
    status = at_b.get(status_url, headers={"x-user": "analyst"})
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["state"] == "completed" and body["replica"] == "a" and body["requester"] == "an-liu"
    assert body["gateway_decision"]["datasets"] == ["medical.claims_2025"] and body["rounds"] == 1
    assert at_b.get(status_url, headers={"x-user": "medical"}).status_code == 404  # not the requester: no such job
    listed = at_b.get("/v1/training/jobs", headers={"x-user": "officer"}).json()["jobs"]
    assert [(j["job_id"], j["state"], j["replica"]) for j in listed] == [("shared-1", "completed", "a")]
    detail = at_b.get("/v1/training/jobs/shared-1", headers={"x-user": "officer"}).json()
    assert detail["job_id"] == "shared-1" and detail["state"] == "completed" and detail["replica"] == "a"
    assert at_b.get("/v1/training/jobs/ghost-1", headers={"x-user": "officer"}).status_code == 404
    # An admin sees its own agency's jobs only (the job is hrss's), through either replica.
    for client in (at_a, at_b):
        assert [
            j["job_id"] for j in client.get("/v1/training/jobs", headers={"x-user": "hrss-admin"}).json()["jobs"]
        ] == ["shared-1"]
        assert client.get("/v1/training/jobs", headers={"x-user": "tax-admin"}).json()["jobs"] == []
        assert client.get("/v1/training/jobs/shared-1", headers={"x-user": "tax-admin"}).status_code == 404

    # The privacy budgets name the jobs that spent ε only to whoever may see them (replica a's ledger).
    def spenders(user: str) -> list[str]:
        budgets = at_a.get("/v1/training/jobs", headers={"x-user": user}).json()["budgets"]
        return sorted({s["job_id"].split("~")[0] for b in budgets for s in b["jobs"]})

    assert spenders("officer") == spenders("hrss-admin") == ["shared-1"] and spenders("tax-admin") == []
    # The id is the federation's now: the other replica refuses it though its own directory is empty.
    again = post(at_b, "analyst", job_body("shared-1", epsilon=1.0))
    assert again.status_code == 409 and again.json()["error"] == "job_exists"


def test_an_admin_gets_its_agencys_newest_jobs_however_many_other_agencies_ran(tmp_path: Path) -> None:
    """The list's limit applies after the agency filter: 205 newer jobs of another agency do not
    push an admin's own out of its list (job directories, and the shared store of other replicas)."""
    import json
    import os

    from gateway.console.training import MAX_JOBS, list_jobs

    jobs_dir = tmp_path / "jobs"
    store = TrainingJobStore(tmp_path / "shared.sqlite", replica="b")
    for i in range(MAX_JOBS + 5):
        agency = "tax" if i < 3 else "hrss"
        job = jobs_dir / f"job-{i:03d}"
        job.mkdir(parents=True)
        submission = {"requester": {"user": f"u-{agency}", "agency": agency}, "job": {}}
        (job / "submission.json").write_text(json.dumps(submission))
        os.utime(job, (1_000 + i, 1_000 + i))  # the tax jobs are the oldest
        store.claim(f"other-{i:03d}", f"u-{agency}", submission)  # claimed in order: the tax jobs first

    def tax(summary: dict[str, Any]) -> bool:
        return summary.get("requester_agency") == "tax"

    assert [j["job_id"] for j in list_jobs(jobs_dir, tax)] == ["job-002", "job-001", "job-000"]
    assert len(list_jobs(jobs_dir)) == MAX_JOBS
    recent = store.recent(MAX_JOBS, keep=lambda r: r["submission"]["requester"]["agency"] == "tax")
    assert [r["job_id"] for r in recent] == ["other-002", "other-001", "other-000"]


def test_a_job_the_gateway_could_not_start_is_failed_not_queued_for_ever(two_replicas: Any) -> None:
    """The id was claimed, then the audit log refused the acceptance: without care the shared record
    stayed "queued" at every replica and the id was burned with nothing ever running."""
    at_a, at_b, _, service_a = two_replicas
    appended = service_a._append

    def audit_down(record: Any) -> None:
        if record.kind == "training_job_approved":
            raise OSError("audit log unavailable")
        appended(record)

    service_a._append = audit_down  # type: ignore[method-assign]
    refused = post(at_a, "analyst", job_body("broken-1", epsilon=1.0))
    assert refused.status_code >= 500
    status = at_b.get("/v1/training/jobs/broken-1/status", headers={"x-user": "analyst"}).json()
    assert status["state"] == "failed" and "could not start" in status["reason"]
    assert service_a.active is None


def test_two_replicas_claiming_one_job_id_at_once_get_one_winner(pg_url: str) -> None:
    a, b = PostgresDatabase(pg_url, max_size=4), PostgresDatabase(pg_url, max_size=4)
    try:
        reset_component(a, "training_jobs", "training_jobs")
        migrate(a, TRAINING_JOB_MIGRATIONS)
        stores = [TrainingJobStore(a, "a"), TrainingJobStore(b, "b")]
        won: list[str] = []
        lost: list[str] = []
        start = threading.Barrier(8)

        def claim(n: int) -> None:
            store = stores[n % 2]
            start.wait()
            try:
                store.claim("race-1", f"user-{n}", {"n": n})
                won.append(store.replica)
            except JobExists:
                lost.append(store.replica)

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 7
        record = stores[1].get("race-1")
        assert record is not None and record["replica"] == won[0]
    finally:
        a.close()
        b.close()
