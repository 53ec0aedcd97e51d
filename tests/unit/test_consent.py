"""Consent registry and its REST routes: every refusal has a clear reason; one-time means once."""

from __future__ import annotations

import base64
import secrets
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from crypto.artefacts import Signer, sign_artefact
from crypto.envelope import SigningKey
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


def test_a_revocation_made_while_a_check_waited_for_the_lock_is_honoured(registry: ConsentRegistry) -> None:
    """A check reads its clock before it waits for the consent's lock; the subject revokes meanwhile,
    so the revocation is stamped after the check's `now`. It must still refuse (review: before, the
    revocation counted only from its own time and the waiting check used the consent)."""
    ref = _register(registry)
    started = T0 + timedelta(days=1)
    registry.revoke(ref, started + timedelta(seconds=2))
    with pytest.raises(PolicyDenied, match="revoked"):
        registry.reserve(ref, SUBJECT, "civil_affairs", "income_certificate", started)
    assert registry.lookup(ref).uses == 0


def test_another_agency_learns_nothing_of_a_consents_state_or_subject(registry: ConsentRegistry) -> None:
    """A caseworker of another agency holding a leaked reference is refused for the agency alone,
    whatever the consent's state or subject (review: revoked, expired and 'does not cover this
    subject' came first, so it learned whether a person was the subject and had revoked)."""
    ref = _register(registry)
    registry.revoke(ref, T0 + timedelta(days=1))
    for subject, when in ((SUBJECT, T0 + timedelta(days=2)), ("z" * 26, T0 + timedelta(days=99))):
        with pytest.raises(PolicyDenied, match="given to another agency, not 'hrss'"):
            registry.verify(ref, subject, "hrss", "income_certificate", when)


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

CM_KEY = SigningKey.generate("mydata", "consent_manager")
OTHER_CM_KEY = SigningKey.generate("othercm", "consent_manager")
MANAGERS = {k.key_id: Signer.of(k.agency, base64.b64encode(k.public_raw).decode()) for k in (CM_KEY, OTHER_CM_KEY)}

USERS = {
    "ca": Principal("ca-caseworker-gold", "civil_affairs", "caseworker", "gold"),
    "tax": Principal("tax-caseworker", "tax", "caseworker", "silver"),
    "sec": Principal("security-officer", "household", "security_officer", "gold"),
    "cm": Principal("mydata-service", "mydata", "consent_manager", "bronze"),
}


def _authenticate(request: Request) -> Principal:
    user = USERS.get(request.headers.get("x-test-user", ""))
    if user is None:
        raise Unauthenticated("no such test user")
    return user


@pytest.fixture
def signed_registry(tmp_path: Path) -> ConsentRegistry:
    return ConsentRegistry(tmp_path / "s.db", purposes={"income_certificate", "dibao"}, managers=MANAGERS)


@pytest.fixture
def client(signed_registry: ConsentRegistry) -> TestClient:
    services = Services(authenticate=_authenticate, consents=signed_registry, clock=lambda: T0 + timedelta(hours=1))
    return TestClient(create_app(services))


def artefact(key: SigningKey = CM_KEY, **change: object) -> dict[str, str]:
    body: dict[str, object] = {
        "ref": "cns_" + secrets.token_urlsafe(16),
        "subject": SUBJECT,
        "agency": "civil_affairs",
        "purpose": "income_certificate",
        "programs": ["income_certificate"],
        "valid_from": T0.isoformat(),
        "valid_until": (T0 + timedelta(days=30)).isoformat(),
        "max_uses": 1,
    }
    body.update(change)
    return {"artefact": sign_artefact(body, key)}


def test_routes_create_read_revoke(client: TestClient) -> None:
    created = client.post("/v1/consents", json=artefact(), headers={"x-test-user": "cm"})
    assert created.status_code == 201, created.text
    ref = created.json()["ref"]
    assert created.json()["status"] == "active" and created.json()["issuer"] == "mydata"
    assert created.json()["programs"] == ["income_certificate"]

    read = client.get(f"/v1/consents/{ref}", headers={"x-test-user": "sec"})
    assert read.status_code == 200 and read.json()["max_uses"] == 1
    assert client.get(f"/v1/consents/{ref}", headers={"x-test-user": "ca"}).status_code == 200  # status by ref
    assert client.get(f"/v1/consents/{ref}", headers={"x-test-user": "tax"}).status_code == 403
    listed = client.get("/v1/consents", params={"subject": SUBJECT}, headers={"x-test-user": "cm"})
    assert listed.status_code == 200 and [v["ref"] for v in listed.json()] == [ref]

    for who in ("sec", "ca"):  # the requesting agency cannot revoke for the subject either
        assert client.delete(f"/v1/consents/{ref}", headers={"x-test-user": who}).status_code == 403
    revoked = client.delete(f"/v1/consents/{ref}", headers={"x-test-user": "cm"})
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"


def test_routes_refuse_bad_input(client: TestClient) -> None:
    headers = {"x-test-user": "cm"}
    for change in (
        {"subject": "110101199003077777"},  # a national id is not a pseudonym
        {"valid_until": T0.isoformat()},
        {"valid_from": "2026-03-02T03:00:00"},  # no time zone
        {"max_uses": 0},
        {"programs": []},
        {"unexpected": 1},
        {"valid_until": "9999-12-31T23:00:00-05:00"},  # no UTC date: refused, not a 500
    ):
        r = client.post("/v1/consents", json=artefact(**change), headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "invalid_input", (change, r.text)
    r = client.post("/v1/consents", json=artefact(purpose="curiosity"), headers=headers)
    assert r.status_code == 400 and "not registered" in r.json()["message"]
    assert client.post("/v1/consents", json={"artefact": "{}"}, headers=headers).status_code == 403
    assert client.post("/v1/consents", json={"subject": SUBJECT}, headers=headers).status_code == 400
    missing = client.get("/v1/consents/cns_" + "z" * 22, headers=headers)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert client.get("/v1/consents/whatever", headers=headers).status_code == 404
    assert client.get("/v1/consents", params={"subject": "x"}, headers=headers).status_code == 400
    assert client.post("/v1/consents", json=artefact()).status_code == 401


def test_signed_consent_is_checked_for_its_program(signed_registry: ConsentRegistry) -> None:
    record = signed_registry.register_signed(artefact()["artefact"])
    at = T0 + timedelta(hours=1)
    signed_registry.verify(record.ref, SUBJECT, "civil_affairs", "income_certificate", at, program="income_certificate")
    with pytest.raises(PolicyDenied, match="does not cover program 'dibao'"):
        signed_registry.verify(record.ref, SUBJECT, "civil_affairs", "income_certificate", at, program="dibao")
    assert signed_registry.artefact(record.ref).startswith("{")


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


def test_consent_managers_file_is_validated_and_reread(tmp_path: Path) -> None:
    from policies.consent import ConsentManagers, load_consent_managers
    from xgate.errors import ConfigError

    assert load_consent_managers(tmp_path) == {}
    managers = ConsentManagers(tmp_path)
    assert managers.current() == {}
    path = tmp_path / "consent_managers.toml"
    public = base64.b64encode(CM_KEY.public_raw).decode()
    path.write_text(f'[[consent_manager]]\nname = "mydata"\npublic_key = "{public}"\n')
    assert list(managers.current()) == [CM_KEY.key_id]  # picked up without a restart
    for bad, reason in (
        ('[[consent_manager]]\nname = "x"\n', "exactly name and public_key"),
        ('[[consent_manager]]\nname = "x"\npublic_key = "bm90IGEga2V5"\n', "not a base64 Ed25519 public key"),
        ("[[consent_manager]\n", "consent_managers.toml"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=reason):
            load_consent_managers(tmp_path)
