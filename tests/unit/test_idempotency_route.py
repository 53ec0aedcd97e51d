"""POST /v1/checks with an Idempotency-Key, in process: the route's replay and every refusal.

The check service here is a stand-in that counts how often it ran (every run is a computation
and a budget charge in the real service); the processes-level test is
tests/integration/test_idempotent_checks.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from audit.checkpoints import generate_key, save_keypair
from exchange.cohort import COHORT_MEMBER_UNKNOWN
from exchange.service import _commit
from exchange.types import CheckOutcome, CriterionVerdict
from gateway.app import create_app
from gateway.audit import GatewayAudit
from gateway.idempotency import Claim, IdempotencyStore, key_digest, request_digest
from gateway.routes.checks import ROUTE
from gateway.services import Services
from xgate.errors import NodeRefused, NodeUnavailable
from xgate.principal import Principal

BODY = {
    "program": "dibao",
    "purpose": "eligibility",
    "legal_basis": "reg:1",
    "case_id": "c1",
    "mode": "plaintext",
    "pseudonyms": ["a" * 26, "b" * 26],
}
KEY = "3c0d9a1e-5b7f-4f43-a2b8-0d2f64c1e9aa"
AUTH = {"Authorization": "Bearer good"}


class Nodes:
    def agencies(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None


class Service:
    """Counts runs; each run answers with a fresh random-looking result (as masked HE results are)."""

    def __init__(self, audit: GatewayAudit) -> None:
        self.nodes = Nodes()
        self.programs = None
        self.service = self
        self.audit = audit
        self.runs = 0
        self.fail: Exception | None = None
        self.charge_s = 0.0  # how long charging the answer takes (the real service's commit)
        self.owners: list[str] = []  # whose reservations each run made (the claim's token)
        self.released_owners: list[str] = []

    def release_owner(self, owner: str) -> int:
        self.released_owners.append(owner)
        return 1

    async def run(
        self,
        principal: Principal,
        request: Any,
        request_id: str | None = None,
        answered: Any = None,
        owner: str = "",
        fence: Any = None,
    ) -> CheckOutcome:
        self.runs += 1
        self.owners.append(owner)
        await self.audit.record({"kind": "result", "request_id": request_id, "actor_user": principal.user,
                                 "actor_agency": principal.agency, "actor_role": principal.role})  # fmt: skip
        if self.fail is not None:
            raise self.fail
        outcome = CheckOutcome(
            request_id=request_id or "",
            program="dibao",
            program_version="1",
            mode="plaintext",
            view="per_criterion",
            subjects=2,
            chunk_size=4096,
            shuffled=False,
            criteria=(CriterionVerdict("income", "income below the line", passes=(self.runs % 2 == 1, True)),),
            timings_ms={"total": 1.5 * self.runs},
        )
        if fence is not None:  # as CheckService.run: the charge is fenced by the claim
            await asyncio.to_thread(fence)
        if self.charge_s:  # as CheckService.run: the commit finishes, the answer is handed over
            cancelled = await _commit(lambda: time.sleep(self.charge_s))
            if answered is not None:
                answered(outcome)
            if cancelled:
                raise asyncio.CancelledError
        return outcome


def authenticate(request: Request) -> Principal:
    user = request.headers.get("x-user", "cw-001")
    return Principal(user=user, agency="civil_affairs", role="caseworker", tier="gold")


Env = tuple[TestClient, Service, IdempotencyStore, GatewayAudit]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    save_keypair(generate_key(), tmp_path / "gw")
    audit = GatewayAudit.open(tmp_path / "audit.sqlite", tmp_path / "gw.key.pem", {}, writer="thread")
    service = Service(audit)
    store = IdempotencyStore(tmp_path / "idempotency.sqlite")
    services = Services(authenticate=authenticate, coordinator=service, audit=audit, idempotency=store)  # type: ignore[arg-type]
    app: FastAPI = create_app(services, max_body_bytes=100_000)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, service, store, audit


def _post(client: TestClient, body: dict[str, Any] = BODY, key: str | None = KEY, **headers: str) -> Any:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/checks", json=body, headers={**AUTH, **extra, **headers})


def test_a_retried_check_is_replayed_byte_for_byte_and_runs_once(env: Env) -> None:
    client, service, _, _ = env
    first = _post(client)
    assert first.status_code == 200, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = _post(client)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content  # the same (masked) result, not a recomputation
    assert again.headers["X-Request-Id"] != first.headers["X-Request-Id"]  # a request of its own
    assert service.runs == 1


def test_without_a_key_every_request_runs(env: Env) -> None:
    client, service, _, _ = env
    a, b = _post(client, key=None), _post(client, key=None)
    assert a.status_code == b.status_code == 200 and a.content != b.content and service.runs == 2


def test_the_same_key_with_another_body_is_refused_and_not_run(env: Env) -> None:
    client, service, _, _ = env
    assert _post(client).status_code == 200
    r = _post(client, {**BODY, "case_id": "c2"})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "idempotency_key_reused" and KEY not in r.text
    assert service.runs == 1


def test_a_key_still_running_elsewhere_is_refused_409_with_retry_after(env: Env) -> None:
    client, service, store, _ = env
    # Another replica (same shared store) claimed this key and is still computing.
    digest = request_digest(
        ROUTE,
        {
            **BODY,
            "consent_ref": "",
            "approval_ref": "",
            "context_fingerprint": "",
            "public_context": "",
            "requester_statement": "",
        },
    )
    claim = store.begin("civil_affairs/cw-001", KEY, digest)
    assert isinstance(claim, Claim)
    r = _post(client)
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "idempotency_in_progress" and int(r.headers["Retry-After"]) >= 1
    assert service.runs == 0
    store.complete(claim, 200, b'{"from":"the other replica"}')
    replay = _post(client)
    assert replay.status_code == 200 and replay.content == b'{"from":"the other replica"}'
    assert service.runs == 0


def test_a_check_charged_as_its_deadline_passes_is_kept_for_the_retry(env: Env) -> None:
    """The deadline lands while the answer is being charged: the caller gets 504, but the answer
    it paid for is stored under its key, so the retry replays it (neither computed nor charged
    again; a one-time consent would otherwise be refused as used)."""
    client, service, store, _ = env
    service.charge_s = 0.8
    late = _post(client, **{"X-Request-Timeout": "0.3"})
    assert late.status_code == 504, late.text
    service.charge_s = 0.0
    for _ in range(50):  # the commit finishes in its thread after the 504 went out
        if store.count() == 1:
            break
        time.sleep(0.05)
    retried = _post(client)
    assert retried.status_code == 200 and retried.headers["Idempotent-Replayed"] == "true"
    assert service.runs == 1


def test_a_failed_check_frees_the_key_and_the_retry_recomputes(env: Env) -> None:
    client, service, store, _ = env
    service.fail = NodeUnavailable("hrss", "node unreachable")
    failed = _post(client)
    assert failed.status_code == 503 and store.count() == 0  # error answers are never stored
    service.fail = None
    retried = _post(client)
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers
    assert service.runs == 2


def test_a_refusal_charged_as_an_answer_is_replayed_not_charged_again(env: Env) -> None:
    """The register node refusing a cohort member it does not know is charged like an answer
    (exchange/service.py `charged_refusal`): a retry with the key gets the same refusal back, not
    a second computation and charge (review: the claim was dropped, as for a failure)."""
    client, service, _, _ = env
    service.fail = NodeRefused(
        "household", "refused: not every member is a person known to the civil register", refusal=COHORT_MEMBER_UNKNOWN
    )
    first = _post(client)
    assert first.status_code == 403 and first.json()["error"] == "node_refused"
    retried = _post(client)
    assert retried.status_code == 403 and retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["message"] == first.json()["message"] and service.runs == 1


@pytest.mark.parametrize("bad", ["", "x" * 256, "caf\u00e9", "a\tb"], ids=["empty", "too-long", "non-ascii", "tab"])
def test_a_malformed_key_is_refused_400_and_not_run(env: Env, bad: str) -> None:
    client, service, store, _ = env
    r = client.post(
        "/v1/checks",
        content=__import__("json").dumps(BODY).encode(),
        headers={**AUTH, "Content-Type": "application/json", "Idempotency-Key": bad.encode("utf-8")},  # type: ignore[dict-item]
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_idempotency_key"
    assert service.runs == 0 and store.count() == 0


def test_keys_are_per_user(env: Env) -> None:
    client, service, _, _ = env
    assert _post(client).status_code == 200
    other = _post(client, **{"x-user": "cw-002"})
    assert other.status_code == 200 and "Idempotent-Replayed" not in other.headers
    assert service.runs == 2  # someone else's key never replays my answer


def test_audit_entries_note_the_keys_digest_never_the_key(env: Env) -> None:
    client, _, _, audit = env
    first, again = _post(client), _post(client)
    digest = key_digest(KEY)
    run = audit.log.entries(request_id=first.headers["X-Request-Id"], limit=10)
    assert {e.record.kind for e in run} == {"result", "request"}
    assert all(e.record.digests.get("idempotency_key") == digest for e in run)
    (replayed,) = audit.log.entries(request_id=again.headers["X-Request-Id"], limit=10)
    assert replayed.record.kind == "request" and replayed.record.digests["idempotency_key"] == digest
    assert replayed.record.metadata["idempotent_replayed"] is True
    everything = audit.log.entries(limit=100)
    assert KEY not in repr([e.record.model_dump() for e in everything])
