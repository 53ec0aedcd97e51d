"""One id finds everything about one request (issue 14 items 3 and 5): every response, refusals and
500s included, carries X-Request-Id (and the id in its error body), and the `request` entry records
it; a gateway whose log is compromised refuses actions with 503 but still answers reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from audit.checkpoints import generate_key, save_keypair
from gateway.app import create_app
from gateway.audit import GatewayAudit
from gateway.services import Services
from xgate.errors import AuditLogCompromised, PolicyDenied, Unauthenticated
from xgate.principal import Principal

BODY = {
    "program": "dibao",
    "purpose": "eligibility",
    "legal_basis": "reg:1",
    "case_id": "c1",
    "mode": "plaintext",
    "pseudonyms": ["a" * 26],
}


class Nodes:
    def agencies(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None


class Coordinator:
    def __init__(self) -> None:
        self.nodes = Nodes()
        self.programs = None
        self.service = self
        self.fail: Exception | None = None
        self.seen: list[str | None] = []

    async def run(self, principal: Principal, request: Any, request_id: str | None = None, answered: Any = None) -> Any:
        self.seen.append(request_id)
        assert self.fail is not None
        raise self.fail


def authenticate(request: Request) -> Principal:
    if request.headers.get("authorization") != "Bearer good":
        raise Unauthenticated("missing or unknown API key")
    return Principal(user="cw-001", agency="civil_affairs", role="caseworker", tier="gold")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, GatewayAudit, Coordinator]]:
    save_keypair(generate_key(), tmp_path / "gw")
    audit = GatewayAudit.open(tmp_path / "audit.sqlite", tmp_path / "gw.key.pem", {}, writer="thread")
    coordinator = Coordinator()
    services = Services(authenticate=authenticate, coordinator=coordinator, audit=audit)  # type: ignore[arg-type]
    app: FastAPI = create_app(services, max_body_bytes=1000)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, audit, coordinator


def _request_entry(audit: GatewayAudit, request_id: str) -> dict[str, Any]:
    (entry,) = audit.log.entries(request_id=request_id, kind="request", limit=10)
    return {"status": entry.record.metadata["status"], "error": entry.record.metadata.get("error"),
            "user": entry.record.actor.user}  # fmt: skip


@pytest.mark.parametrize(
    ("how", "status", "error", "user"),
    [
        ("500", 500, "internal_error", "cw-001"),
        ("403", 403, "policy_denied", "cw-001"),
        ("401", 401, "unauthenticated", "anonymous"),
        ("400", 400, "invalid_input", "cw-001"),
        ("413", 413, "payload_too_large", "anonymous"),
    ],
)
def test_every_refusal_and_error_carries_a_request_id_the_log_records(
    env: tuple[TestClient, GatewayAudit, Coordinator], how: str, status: int, error: str | None, user: str
) -> None:
    client, audit, coordinator = env
    headers = {"Authorization": "Bearer good" if how != "401" else "Bearer bad"}
    coordinator.fail = RuntimeError("boom") if how == "500" else PolicyDenied("no permit for this purpose")
    if how == "400":
        r = client.post("/v1/checks", json={"program": "dibao"}, headers=headers)
    elif how == "413":
        r = client.post("/v1/checks", content=b"x" * 2000, headers=headers)
    else:
        r = client.post("/v1/checks", json=BODY, headers=headers)
    assert r.status_code == status, r.text
    request_id = r.headers["X-Request-Id"]
    assert r.json()["request_id"] == request_id  # the caseworker can quote it
    assert "boom" not in r.text and "Traceback" not in r.text
    assert _request_entry(audit, request_id) == {"status": status, "error": error, "user": user}
    if how in ("500", "403"):
        assert coordinator.seen[-1] == request_id  # the check's own entries carry the same id


def test_successful_responses_carry_it_too(env: tuple[TestClient, GatewayAudit, Coordinator]) -> None:
    client, _, _ = env
    r = client.get("/healthz")
    assert r.status_code == 200 and len(r.headers["X-Request-Id"]) == 36


def test_a_compromised_log_refuses_actions_but_answers_reads(env: tuple[TestClient, GatewayAudit, Coordinator]) -> None:
    client, audit, coordinator = env
    audit.compromised = AuditLogCompromised("the audit log is truncated", reason="truncated")
    coordinator.fail = AssertionError("must not run")
    r = client.post("/v1/checks", json=BODY, headers={"Authorization": "Bearer good"})
    assert r.status_code == 503 and r.json()["error"] == "audit_log_compromised"
    assert r.json()["details"]["reason"] == "truncated" and coordinator.seen == []
    assert _request_entry(audit, r.headers["X-Request-Id"])["error"] == "audit_log_compromised"
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/subjects/ID110101199003071234/accesses",
        "/v1/subjects/110101-19900307-1234/accesses",
        "/v1/张三/北京市朝阳区建国路88号/tel:13800138000x",
    ],
)
def test_an_unauthenticated_path_full_of_personal_data_never_reaches_the_log(
    env: tuple[TestClient, GatewayAudit, Coordinator], path: str
) -> None:
    """Attack: anyone, without a key, writes a name, an address, a phone or a national id into the
    append-only log through the request path (it recorded the raw path). Now the entry names the
    matched route's template, or "<unmatched>"."""
    client, audit, _ = env
    r = client.get(path)
    assert r.status_code in (401, 404), r.text
    (entry,) = audit.log.entries(request_id=r.headers["X-Request-Id"], kind="request", limit=10)
    route = entry.record.metadata["route"]
    assert route in ("/v1/subjects/{pseudonym}/accesses", "<unmatched>"), route
    stored = str(entry.record.metadata)
    assert not any(token in stored for token in ("110101", "张三", "北京", "13800138000"))


def test_an_answered_request_names_its_parameters_when_they_are_plain_identifiers() -> None:
    from starlette.routing import Route

    from gateway.api_contract import audited_route

    route = Route("/v1/approvals/{ref}", endpoint=lambda request: None)
    scope = {"route": route, "path_params": {"ref": "apr_k3Jd9QxT0bLm2VwYp7Rz4a"}}
    assert audited_route(scope, 200) == "/v1/approvals/apr_k3Jd9QxT0bLm2VwYp7Rz4a"
    assert audited_route(scope, 404) == "/v1/approvals/{ref}"
    assert audited_route({**scope, "path_params": {"ref": "张三"}}, 200) == "/v1/approvals/{ref}"
    assert audited_route({}, 404) == "<unmatched>"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"program":', "body: not valid JSON (Expecting value at character 11)"),  # was "11: JSON decode error"
        (b'{"case_id": "\xff"}', "body: not a JSON document the gateway can read"),  # was error "http_error"
        (b"[" * 50_000 + b"]" * 50_000, "body: not a JSON document the gateway can read"),
        (b'{"case_id": ' + b"9" * 5000 + b"}", "body: not a JSON document the gateway can read"),
    ],
    ids=["truncated", "not-utf8", "nested-50000-deep", "5000-digit-number"],
)
def test_a_body_that_is_not_json_is_invalid_input_saying_so(tmp_path: Path, body: bytes, problem: str) -> None:
    """FastAPI answered these with `http_error` "There was an error parsing the body", or named the
    character offset as a field; the API's contract is `invalid_input` naming the body."""
    save_keypair(generate_key(), tmp_path / "gw")
    audit = GatewayAudit.open(tmp_path / "audit.sqlite", tmp_path / "gw.key.pem", {}, writer="thread")
    services = Services(authenticate=authenticate, coordinator=Coordinator(), audit=audit)  # type: ignore[arg-type]
    with TestClient(create_app(services, max_body_bytes=200_000), raise_server_exceptions=False) as client:
        headers = {"Authorization": "Bearer good", "Content-Type": "application/json"}
        r = client.post("/v1/checks", content=body, headers=headers)
        assert _request_entry(audit, r.headers["X-Request-Id"])["error"] == "invalid_input"
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_input" and r.json()["message"].startswith(problem), r.json()


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"Content-Encoding": "gzip", "Content-Type": "application/json"}, "Content-Encoding 'gzip' is not accepted"),
        ({"Content-Encoding": "br", "Content-Type": "application/json"}, "Content-Encoding 'br' is not accepted"),
        ({"Content-Type": "text/plain"}, "send the body as Content-Type: application/json"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "send the body as Content-Type: application/json"),
        ({}, "send the body as Content-Type: application/json"),
        ({"Content-Type": "application/json; charset=utf-16"}, "a JSON body is UTF-8"),
        (
            [("Content-Encoding", "gzip"), ("Content-Encoding", "identity"), ("Content-Type", "application/json")],
            "Content-Encoding 'gzip' is not accepted",
        ),  # the last line alone was read
        ([("Content-Type", "text/plain"), ("Content-Type", "application/json")], "application/json (once)"),
    ],
    ids=["gzip", "br", "text", "form", "none", "utf-16", "gzip-then-identity", "two-types"],
)
def test_a_body_not_sent_as_plain_json_is_415(
    env: tuple[TestClient, GatewayAudit, Coordinator], headers: dict[str, str] | list[tuple[str, str]], problem: str
) -> None:
    """A body declared gzip (or br, or a form) was parsed as plain JSON all the same and answered 200,
    so a proxy that decodes what the gateway ignores would see another request than the gateway."""
    client, audit, coordinator = env
    coordinator.fail = AssertionError("must not run")
    lines = list(headers.items()) if isinstance(headers, dict) else headers
    r = client.post("/v1/checks", content=json.dumps(BODY).encode(), headers=[("Authorization", "Bearer good"), *lines])
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type", r.text
    assert problem in r.json()["message"] and coordinator.seen == []
    assert _request_entry(audit, r.headers["X-Request-Id"])["status"] == 415
    # Positive control: the same body as plain JSON (with the charset spelled out) reaches the check.
    coordinator.fail = PolicyDenied("no permit for this purpose")
    ok = {"Authorization": "Bearer good", "Content-Type": "application/json; charset=utf-8"}
    assert client.post("/v1/checks", content=json.dumps(BODY).encode(), headers=ok).status_code == 403
