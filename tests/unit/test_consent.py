"""Consent registry and its REST routes: every refusal has a clear reason; one-time means once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.services import Services
from policies.consent import ConsentRegistry
from xgate.errors import InvalidInput, NotFound, PolicyDenied, Unauthenticated
from xgate.principal import Principal

T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
SUBJECT = "abcdefghijklmnopqrstuvwxyz"
OTHER = "zyxwvutsrqponmlkjihgfedcba"


@pytest.fixture
def registry(tmp_path: Path) -> ConsentRegistry:
    return ConsentRegistry(tmp_path / "c.db", purposes={"income_certificate", "dibao"})


def _register(registry: ConsentRegistry, **kw: object) -> str:
    args: dict[str, object] = dict(
        subject=SUBJECT,
        agency="civil_affairs",
        purpose="income_certificate",
        valid_from=T0,
        valid_until=T0 + timedelta(days=30),
    )
    args.update(kw)
    return registry.register(**args)  # type: ignore[arg-type]


def test_valid_consent_passes_and_counts_uses(registry: ConsentRegistry) -> None:
    ref = _register(registry)
    record = registry.check(ref, SUBJECT, "civil_affairs", "income_certificate", T0 + timedelta(hours=1))
    assert record.uses == 1
    assert registry.lookup(ref).uses == 1


REFUSALS = [
    (
        "unknown",
        lambda r, ref: r.check("cns_" + "x" * 22, SUBJECT, "civil_affairs", "income_certificate", T0),
        "unknown consent reference",
    ),
    (
        "malformed ref",
        lambda r, ref: r.check("nope", SUBJECT, "civil_affairs", "income_certificate", T0),
        "unknown consent reference",
    ),
    (
        "expired",
        lambda r, ref: r.check(ref, SUBJECT, "civil_affairs", "income_certificate", T0 + timedelta(days=31)),
        "expired",
    ),
    (
        "not yet valid",
        lambda r, ref: r.check(ref, SUBJECT, "civil_affairs", "income_certificate", T0 - timedelta(seconds=1)),
        "not yet valid",
    ),
    ("wrong purpose", lambda r, ref: r.check(ref, SUBJECT, "civil_affairs", "dibao", T0), "another purpose"),
    ("wrong agency", lambda r, ref: r.check(ref, SUBJECT, "tax", "income_certificate", T0), "another agency"),
    (
        "wrong subject",
        lambda r, ref: r.check(ref, OTHER, "civil_affairs", "income_certificate", T0),
        "does not cover this subject",
    ),
]


@pytest.mark.parametrize(("name", "call", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(registry: ConsentRegistry, name: str, call, reason: str) -> None:  # type: ignore[no-untyped-def]
    ref = _register(registry)
    with pytest.raises(PolicyDenied, match=reason) as err:
        call(registry, ref)
    assert SUBJECT not in err.value.message
    assert registry.lookup(ref).uses == 0  # a refusal consumes nothing


def test_revoked_consent_is_refused(registry: ConsentRegistry) -> None:
    ref = _register(registry)
    registry.revoke(ref, T0 + timedelta(days=1))
    registry.revoke(ref, T0 + timedelta(days=2))  # idempotent: the first time stays
    assert registry.lookup(ref).revoked_at == T0 + timedelta(days=1)
    with pytest.raises(PolicyDenied, match="revoked"):
        registry.check(ref, SUBJECT, "civil_affairs", "income_certificate", T0 + timedelta(days=3))
    with pytest.raises(NotFound):
        registry.revoke("cns_" + "y" * 22)


def test_one_time_consent_cannot_be_reused_even_concurrently(registry: ConsentRegistry) -> None:
    ref = _register(registry, max_uses=1)
    outcomes: list[bool] = []

    def use() -> None:
        try:
            registry.check(ref, SUBJECT, "civil_affairs", "income_certificate", T0)
            outcomes.append(True)
        except PolicyDenied as exc:
            assert "one-time consent already used" in exc.message
            outcomes.append(False)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 1
    assert registry.lookup(ref).uses == 1


def test_frequency_limit(registry: ConsentRegistry) -> None:
    ref = _register(registry, frequency=(1, 7))
    registry.check(ref, SUBJECT, "civil_affairs", "income_certificate", T0)
    with pytest.raises(PolicyDenied, match="at most 1 uses per 7 days"):
        registry.check(ref, SUBJECT, "civil_affairs", "income_certificate", T0 + timedelta(days=6))
    registry.check(ref, SUBJECT, "civil_affairs", "income_certificate", T0 + timedelta(days=8))


def test_register_validation(registry: ConsentRegistry) -> None:
    with pytest.raises(InvalidInput, match="after"):
        _register(registry, valid_until=T0)
    with pytest.raises(InvalidInput, match="not registered"):
        _register(registry, purpose="curiosity")
    with pytest.raises(InvalidInput, match="time zone"):
        _register(registry, valid_from=T0.replace(tzinfo=None))
    with pytest.raises(InvalidInput):
        _register(registry, max_uses=0)


# -- REST routes ----------------------------------------------------------------------------------

USERS = {
    "ca": Principal("ca-caseworker-gold", "civil_affairs", "caseworker", "gold"),
    "tax": Principal("tax-caseworker", "tax", "caseworker", "silver"),
    "sec": Principal("security-officer", "household", "security_officer", "gold"),
}


def _authenticate(request: Request) -> Principal:
    user = USERS.get(request.headers.get("x-test-user", ""))
    if user is None:
        raise Unauthenticated("no such test user")
    return user


@pytest.fixture
def client(registry: ConsentRegistry) -> TestClient:
    services = Services(authenticate=_authenticate, consents=registry, clock=lambda: T0 + timedelta(hours=1))
    return TestClient(create_app(services))


BODY = {
    "subject": SUBJECT,
    "agency": "civil_affairs",
    "purpose": "income_certificate",
    "valid_from": T0.isoformat(),
    "valid_until": (T0 + timedelta(days=30)).isoformat(),
    "max_uses": 1,
}


def test_routes_create_read_revoke(client: TestClient) -> None:
    created = client.post("/v1/consents", json=BODY, headers={"x-test-user": "ca"})
    assert created.status_code == 201, created.text
    ref = created.json()["ref"]
    assert created.json()["status"] == "active"

    read = client.get(f"/v1/consents/{ref}", headers={"x-test-user": "sec"})
    assert read.status_code == 200 and read.json()["max_uses"] == 1

    assert client.get(f"/v1/consents/{ref}", headers={"x-test-user": "tax"}).status_code == 403
    assert client.delete(f"/v1/consents/{ref}", headers={"x-test-user": "sec"}).status_code == 403
    revoked = client.delete(f"/v1/consents/{ref}", headers={"x-test-user": "ca"})
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"


def test_routes_refuse_bad_input(client: TestClient) -> None:
    headers = {"x-test-user": "ca"}
    for change in (
        {"subject": "110101199003077777"},  # a national id is not a pseudonym
        {"valid_until": T0.isoformat()},
        {"valid_from": "2026-03-02T03:00:00"},  # no time zone
        {"max_uses": 0},
        {"unexpected": 1},
    ):
        r = client.post("/v1/consents", json={**BODY, **change}, headers=headers)
        assert 400 <= r.status_code < 500, change
    r = client.post("/v1/consents", json={**BODY, "purpose": "curiosity"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"] == "invalid_input"
    missing = client.get("/v1/consents/cns_" + "z" * 22, headers=headers)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert client.get("/v1/consents/whatever", headers=headers).status_code == 404
    assert client.post("/v1/consents", json=BODY).status_code == 401


def test_verify_refuses_like_check_but_consumes_nothing(registry: ConsentRegistry) -> None:
    ref = _register(registry, max_uses=1)
    at = T0 + timedelta(hours=1)
    registry.verify(ref, SUBJECT, "civil_affairs", "income_certificate", at)
    registry.verify(ref, SUBJECT, "civil_affairs", "income_certificate", at)
    assert registry.lookup(ref).uses == 0
    with pytest.raises(PolicyDenied, match="does not cover this subject"):
        registry.verify(ref, OTHER, "civil_affairs", "income_certificate", at)
    with pytest.raises(PolicyDenied, match="unknown consent reference"):
        registry.verify("cns_" + "x" * 22, SUBJECT, "civil_affairs", "income_certificate", at)
    registry.check(ref, SUBJECT, "civil_affairs", "income_certificate", at)
    with pytest.raises(PolicyDenied, match="one-time consent already used"):
        registry.verify(ref, SUBJECT, "civil_affairs", "income_certificate", at)
