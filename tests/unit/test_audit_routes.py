"""Officer REST routes over the audit log (FastAPI TestClient on the gateway app, fake policy)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from audit import merkle
from audit.store import AuditLog
from audit.testing import ORIGIN, log_signer, pseudonym, record
from gateway.app import create_app
from gateway.services import Services
from policies.types import AccessRequest
from xgate.errors import PolicyDenied
from xgate.principal import Principal


def authenticate(request: Request) -> Principal:
    role = request.headers.get("x-role", "caseworker")
    return Principal("so-1" if role == "security_officer" else "cw-1", "audit_office", role, "gold")


@dataclass
class FakeDecision:
    allowed: bool

    def raise_if_denied(self) -> None:
        if not self.allowed:
            raise PolicyDenied("security officers only")


class FakeEngine:
    """The read_audit decision: officers only (the baseline policy's rule)."""

    def decide(self, request: AccessRequest) -> FakeDecision:
        return FakeDecision(request.action == "read_audit" and request.principal == "so-1")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, AuditLog]]:
    log = AuditLog.open(tmp_path / "a.db", signer=log_signer(), origin=ORIGIN)
    log.append_many([record(i, user="alice" if i % 2 else "bob", request_id=f"r-{i % 3}") for i in range(9)])
    app = create_app(Services(authenticate=authenticate, policy=FakeEngine(), audit_log=log))
    client = TestClient(app, headers={"x-role": "security_officer"})
    try:
        yield client, log
    finally:
        log.close()


def _reads(log: AuditLog) -> list[dict[str, object]]:
    return [dict(e.record.metadata) for e in log.entries(kind="audit_read", limit=1000)]


def test_non_officer_is_refused_and_nothing_logged(env: tuple[TestClient, AuditLog]) -> None:
    client, log = env
    r = client.get("/v1/audit/entries", headers={"x-role": "caseworker"})
    assert r.status_code == 403 and r.json()["error"] == "policy_denied"
    assert log.size == 9


def test_list_entries_with_filters_paging_and_the_read_is_logged(env: tuple[TestClient, AuditLog]) -> None:
    client, log = env
    r = client.get("/v1/audit/entries", params={"user": "alice", "limit": 2})
    body = r.json()
    assert r.status_code == 200 and [e["index"] for e in body["entries"]] == [1, 3] and body["next_offset"] == 2
    assert body["entries"][0]["record"]["actor"]["user"] == "alice"
    r = client.get("/v1/audit/entries", params={"user": "alice", "offset": 2, "limit": 2})
    assert [e["index"] for e in r.json()["entries"]] == [5, 7]
    reads = _reads(log)
    assert len(reads) == 2 and reads[0]["route"] == "entries" and reads[0]["filter_user"] == "alice"
    assert log.entry(9).record.actor.user == "so-1"


def test_bad_filters_are_400(env: tuple[TestClient, AuditLog]) -> None:
    client, _ = env
    assert client.get("/v1/audit/entries", params={"subject": "110101199003077777"}).status_code == 400
    assert client.get("/v1/audit/entries", params={"limit": 100000}).status_code == 400
    assert client.get("/v1/audit/entries", params={"decision": "maybe"}).status_code == 400
    # A filter value that looks like a national id is neither searched for nor written to the log.
    assert client.get("/v1/audit/entries", params={"request_id": "110101199003077777"}).status_code == 400


def test_entry_with_inclusion_proof_to_latest_checkpoint(env: tuple[TestClient, AuditLog]) -> None:
    client, log = env
    assert client.get("/v1/audit/entries/4").json()["inclusion_proof"] is None  # nothing checkpointed yet
    cp = client.post("/v1/audit/checkpoints").json()
    body = client.get("/v1/audit/entries/4").json()
    merkle.verify_inclusion(
        4, cp["size"], bytes.fromhex(body["leaf_hash"]), merkle.hashes_from_hex(body["inclusion_proof"]),
        bytes.fromhex(cp["root"]),
    )  # fmt: skip
    assert log.signer is not None
    log.signer.verifier().verify(body["checkpoint"]["note"])
    assert client.get("/v1/audit/entries/999").status_code == 404


def test_checkpoints_and_proofs(env: tuple[TestClient, AuditLog]) -> None:
    client, _ = env
    first = client.post("/v1/audit/checkpoints").json()
    client.get("/v1/audit/entries")  # grows the log by one audit_read
    second = client.post("/v1/audit/checkpoints").json()
    assert second["size"] > first["size"]
    listed = client.get("/v1/audit/checkpoints").json()["checkpoints"]
    assert [c["size"] for c in listed][:2] == [second["size"], first["size"]]
    inc = client.get("/v1/audit/proofs/inclusion", params={"index": 2, "size": first["size"]}).json()
    merkle.verify_inclusion(
        2, first["size"], bytes.fromhex(inc["leaf_hash"]), merkle.hashes_from_hex(inc["proof"]),
        bytes.fromhex(first["root"]),
    )  # fmt: skip
    con = client.get("/v1/audit/proofs/consistency", params={"old": first["size"], "new": second["size"]}).json()
    merkle.verify_consistency(
        first["size"], second["size"], bytes.fromhex(first["root"]), bytes.fromhex(second["root"]),
        merkle.hashes_from_hex(con["proof"]),
    )  # fmt: skip
    assert client.get("/v1/audit/proofs/inclusion", params={"index": 1, "size": 10_000}).status_code == 404
    assert client.get("/v1/audit/proofs/consistency", params={"old": 5, "new": 2}).status_code == 400


def test_subject_accesses(env: tuple[TestClient, AuditLog]) -> None:
    client, log = env
    r = client.get(f"/v1/subjects/{pseudonym(4)}/accesses")
    body = r.json()
    assert r.status_code == 200 and [a["index"] for a in body["accesses"]] == [4]
    assert body["accesses"][0]["agency"] == "civil_affairs" and body["accesses"][0]["purpose"] == "eligibility"
    # The officer's look at this subject is itself recorded against the subject.
    assert [e.index for e in log.entries(subject=pseudonym(4))] == [4, 9]
    assert client.get("/v1/subjects/not-a-pseudonym/accesses").status_code == 400


def test_alerts(env: tuple[TestClient, AuditLog]) -> None:
    client, log = env
    log.append_many([record(100 + i, user="mallory", decision="deny") for i in range(6)])
    body = client.get("/v1/audit/alerts").json()
    rules = {(a["rule"], a["user"]) for a in body["alerts"]}
    assert ("repeated_denials", "mallory") in rules
    assert _reads(log)[-1]["route"] == "alerts"


def test_strict_reads_refuse_an_altered_entry_tolerant_reads_mark_it(env: tuple[TestClient, AuditLog]) -> None:
    client, log = env
    conn = sqlite3.connect(log.path)
    conn.execute("UPDATE entries SET data = CAST(REPLACE(CAST(data AS TEXT), 'bob', 'eve') AS BLOB) WHERE idx = 2")
    conn.commit()
    conn.close()
    strict = client.get("/v1/audit/entries", params={"limit": 5})
    assert strict.status_code == 409 and strict.json()["error"] == "integrity_error"
    assert client.get("/v1/audit/entries/2").status_code == 409
    tolerant = client.get("/v1/audit/entries", params={"limit": 5, "mode": "tolerant"}).json()["entries"]
    assert [e["intact"] for e in tolerant] == [True, True, False, True, True]
    assert tolerant[2]["record"]["actor"]["user"] == "eve" and "altered" in tolerant[2]["problem"]
    detail = client.get("/v1/audit/entries/2", params={"mode": "tolerant"}).json()
    assert detail["server_verdict"]["status"] != "verified" and not detail["intact"]
    assert client.get("/v1/audit/entries", params={"mode": "lenient"}).status_code == 400


def test_request_filters_status_and_refused(env: tuple[TestClient, AuditLog]) -> None:
    client, log = env
    for status in (200, 403, 429, 503):
        log.append({"kind": "request", "actor_user": "cw-1", "actor_agency": "a", "actor_role": "caseworker",
                    "method": "GET", "route": "/v1/programs", "status": status})  # fmt: skip
    refused = client.get("/v1/audit/entries", params={"refused": "true"}).json()["entries"]
    assert [e["record"]["metadata"]["status"] for e in refused] == [403, 429]
    only = client.get("/v1/audit/entries", params={"status": 503}).json()["entries"]
    assert [e["record"]["metadata"]["status"] for e in only] == [503]
    assert client.get("/v1/audit/entries", params={"status": 42}).status_code == 400
