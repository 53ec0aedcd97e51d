"""Registered HE contexts: the store (SQLite and PostgreSQL) and /v1/contexts, every refusal.

The route tests run the real app in process with a stand-in check service; the processes-level
tests (a second check sends no context bytes, a restarted node asks again) are in
tests/integration/test_context_registry.py.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tenseal as ts
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from crypto.he import MAX_CONTEXT_BYTES, RequesterKeys, context_fingerprint
from gateway.app import create_app
from gateway.contexts import ContextStore
from gateway.services import Services
from xgate.db import PostgresDatabase, migrate
from xgate.errors import ContextUnknown, CryptoError, PayloadTooLarge, Unauthenticated
from xgate.principal import Principal

AUTH = {"Authorization": "Bearer good"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _secret_context(keys: RequesterKeys, tmp_path: Path) -> bytes:
    keys.save(tmp_path / "k.secret")
    return (tmp_path / "k.secret").read_bytes()


def _foreign_context() -> bytes:
    foreign = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=4096, plain_modulus=1032193)
    foreign.make_context_public()
    return bytes(foreign.serialize(save_galois_keys=False, save_relin_keys=False))


# -- the store ---------------------------------------------------------------------------------
def test_register_names_the_context_by_its_sha256_and_is_idempotent(tmp_path: Path, requester_keys: RequesterKeys):
    clock = Clock()
    store = ContextStore(tmp_path / "c.sqlite", ttl_s=100, clock=clock)
    fp, expires = store.register("civil/cw1", requester_keys.public_context)
    assert fp == context_fingerprint(requester_keys.public_context) and expires == clock.now + 100
    clock.now += 50
    again, renewed = store.register("civil/cw1", requester_keys.public_context)
    assert again == fp and renewed == clock.now + 100 and store.count("civil/cw1") == 1
    assert store.get("civil/cw1", fp) == requester_keys.public_context


def test_a_context_is_found_only_by_its_owner_and_only_until_it_expires(
    tmp_path: Path, requester_keys: RequesterKeys
) -> None:
    clock = Clock()
    store = ContextStore(tmp_path / "c.sqlite", ttl_s=100, clock=clock)
    fp, _ = store.register("civil/cw1", requester_keys.public_context)
    with pytest.raises(ContextUnknown):
        store.get("civil/cw2", fp)  # another user's registration is not yours
    clock.now += 101
    with pytest.raises(ContextUnknown, match="POST /v1/contexts"):
        store.get("civil/cw1", fp)
    assert store.prune() == 1 and store.count() == 0


def test_a_user_holds_at_most_max_per_owner_contexts_the_oldest_goes(tmp_path: Path) -> None:
    clock = Clock()
    store = ContextStore(tmp_path / "c.sqlite", max_per_owner=2, clock=clock)
    fps = []
    for _ in range(3):
        clock.now += 1
        fps.append(store.register("civil/cw1", RequesterKeys.generate().public_context)[0])
    assert store.count("civil/cw1") == 2
    with pytest.raises(ContextUnknown):
        store.get("civil/cw1", fps[0])
    assert store.get("civil/cw1", fps[2])


def test_store_refuses_secret_foreign_garbage_and_oversized_contexts(
    tmp_path: Path, requester_keys: RequesterKeys
) -> None:
    store = ContextStore(tmp_path / "c.sqlite")
    with pytest.raises(CryptoError, match="secret key"):
        store.register("o/u", _secret_context(requester_keys, tmp_path))
    with pytest.raises(CryptoError, match="federation parameters"):
        store.register("o/u", _foreign_context())
    with pytest.raises(CryptoError, match="malformed"):
        store.register("o/u", b"\x00" * 1000)
    with pytest.raises(PayloadTooLarge):
        store.register("o/u", b"\x00" * (MAX_CONTEXT_BYTES + 1))
    with pytest.raises(CryptoError, match="fingerprint"):
        store.get("o/u", "md5:abc")
    assert store.count() == 0


def test_a_second_replica_on_the_same_postgresql_finds_the_context(pg_url: str, requester_keys: RequesterKeys):
    first_db, second_db = PostgresDatabase(pg_url), PostgresDatabase(pg_url)
    try:
        from gateway.contexts import CONTEXT_MIGRATIONS

        migrate(first_db, CONTEXT_MIGRATIONS)
        fp, _ = ContextStore(first_db).register("civil/cw1", requester_keys.public_context)
        assert ContextStore(second_db).get("civil/cw1", fp) == requester_keys.public_context
    finally:
        first_db.close()
        second_db.close()


# -- the routes --------------------------------------------------------------------------------
class Nodes:
    def agencies(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None


class Service:
    """A stand-in check service: counts runs (a check naming an unknown context must not run)."""

    def __init__(self) -> None:
        self.service = self
        self.nodes = Nodes()
        self.programs = None
        self.runs = 0

    async def run(self, principal: Principal, request: Any, request_id: str | None = None, answered: Any = None) -> Any:
        self.runs += 1
        raise AssertionError("not reached in these tests")


def authenticate(request: Request) -> Principal:
    if request.headers.get("Authorization") != AUTH["Authorization"]:
        raise Unauthenticated("missing or unknown API key")
    return Principal(user=request.headers.get("x-user", "cw1"), agency="civil_affairs", role="caseworker", tier="gold")


Env = tuple[TestClient, Service]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    service = Service()
    services = Services(authenticate=authenticate, coordinator=service, contexts=ContextStore(tmp_path / "c.sqlite"))  # type: ignore[arg-type]
    app: FastAPI = create_app(services, max_body_bytes=4 * 1024 * 1024)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, service


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_post_then_get_a_context(env: Env, requester_keys: RequesterKeys) -> None:
    client, _ = env
    r = client.post("/v1/contexts", json={"public_context": _b64(requester_keys.public_context)}, headers=AUTH)
    assert r.status_code == 200, r.text
    fp = r.json()["fingerprint"]
    assert fp == context_fingerprint(requester_keys.public_context)
    assert client.post("/v1/contexts", json={"public_context": _b64(requester_keys.public_context)},
                       headers=AUTH).json()["fingerprint"] == fp  # fmt: skip
    got = client.get(f"/v1/contexts/{fp}", headers=AUTH)
    assert got.status_code == 200 and got.json()["fingerprint"] == fp
    other = client.get(f"/v1/contexts/{fp}", headers={**AUTH, "x-user": "cw2"})
    assert other.status_code == 404 and other.json()["error"] == "context_unknown"


@pytest.mark.parametrize(
    ("make", "status", "code", "text"),
    [
        ("secret", 400, "crypto_error", "secret key"),
        ("foreign", 400, "crypto_error", "federation parameters"),
        ("garbage", 400, "crypto_error", "malformed"),
        ("not_base64", 400, "invalid_input", "base64"),
        ("oversized", 413, "payload_too_large", "exceeds"),
    ],
)
def test_post_refuses_what_is_not_a_public_context_of_the_federation(
    env: Env, requester_keys: RequesterKeys, tmp_path: Path, make: str, status: int, code: str, text: str
) -> None:
    client, _ = env
    value = {
        "secret": lambda: _b64(_secret_context(requester_keys, tmp_path)),
        "foreign": lambda: _b64(_foreign_context()),
        "garbage": lambda: _b64(b"\x01" * 4096),
        "not_base64": lambda: "!!!",
        "oversized": lambda: _b64(b"\x00" * (MAX_CONTEXT_BYTES + 10)),
    }[make]()
    r = client.post("/v1/contexts", json={"public_context": value}, headers=AUTH)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and text in body["message"] and "request_id" in body


def test_contexts_need_authentication(env: Env, requester_keys: RequesterKeys) -> None:
    client, _ = env
    r = client.post("/v1/contexts", json={"public_context": _b64(requester_keys.public_context)})
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    assert client.get(f"/v1/contexts/{context_fingerprint(b'x')}").status_code == 401


def test_get_refuses_a_malformed_fingerprint(env: Env) -> None:
    client, _ = env
    r = client.get("/v1/contexts/sha256:XYZ", headers=AUTH)
    assert r.status_code == 400 and "fingerprint" in r.json()["message"]


CHECK = {"program": "dibao", "purpose": "dibao", "legal_basis": "reg:1", "case_id": "c1", "pseudonyms": ["a" * 26]}


def test_a_check_naming_an_unregistered_context_is_a_404_and_does_not_run(env: Env) -> None:
    client, service = env
    r = client.post("/v1/checks", json={**CHECK, "context_fingerprint": context_fingerprint(b"nobody")}, headers=AUTH)
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "context_unknown" and service.runs == 0


def test_a_check_with_both_a_fingerprint_and_an_inline_context_is_refused(env: Env) -> None:
    client, service = env
    both = {**CHECK, "context_fingerprint": context_fingerprint(b"x"), "public_context": _b64(b"x")}
    r = client.post("/v1/checks", json=both, headers=AUTH)
    assert r.status_code in (400, 404) and service.runs == 0
