"""Attack (issue 13, item 1): a requester creates a consent for the person it wants to check.

POST /v1/consents used to check only that the caller was signed in: a caseworker created a
10,000-use consent and then ran income_certificate on that person. Consent now comes from the
data subject: only a consent manager registers it, only with an artefact signed by a registered
consent manager key, and every node checks the signed artefact again before it answers.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from crypto.artefacts import sign_artefact
from crypto.envelope import SigningKey
from nodes.policy import verify_consent
from policies.consent import ConsentManagers, ConsentRegistry
from protos.xgate.v1 import node_pb2
from tests.unit.test_consent import CM_KEY, MANAGERS, SUBJECT, T0, USERS, artefact, client, signed_registry  # noqa: F401
from xgate.errors import PolicyDenied
from xgate.principal import Principal

USERS.update(
    {
        "analyst": Principal("hrss-analyst", "hrss", "analyst", "gold"),
        "rogue_cm": Principal("rogue-service", "othercm", "consent_manager", "bronze"),
    }
)


@pytest.mark.parametrize("who", ["ca", "tax", "sec", "analyst"])
def test_requesters_cannot_create_a_consent(client: TestClient, who: str) -> None:  # noqa: F811
    r = client.post("/v1/consents", json=artefact(max_uses=10_000), headers={"x-test-user": who})
    assert r.status_code == 403 and "only a consent manager registers them" in r.json()["message"]
    assert client.get("/v1/consents", headers={"x-test-user": who}).status_code == 403


def test_a_consent_manager_cannot_register_an_unsigned_or_forged_artefact(client: TestClient) -> None:  # noqa: F811
    cm = {"x-test-user": "cm"}
    forged = SigningKey.generate("mydata", "consent_manager")  # same name, unregistered key
    assert client.post("/v1/consents", json=artefact(forged), headers=cm).status_code == 403
    good = artefact()["artefact"]
    tampered = good.replace('"max_uses": 1', '"max_uses": 10000')
    assert tampered != good
    r = client.post("/v1/consents", json={"artefact": tampered}, headers=cm)
    assert r.status_code == 403 and "signature does not verify" in r.json()["message"]
    # another registered manager's artefact cannot be passed off as this manager's
    from tests.unit.test_consent import OTHER_CM_KEY

    assert client.post("/v1/consents", json=artefact(OTHER_CM_KEY), headers=cm).status_code == 403
    assert (
        client.post("/v1/consents", json=artefact(OTHER_CM_KEY), headers={"x-test-user": "rogue_cm"}).status_code == 201
    )


def _request(text: str, ref: str, **context: str) -> node_pb2.EncryptRequest:
    fields = {
        "requester_agency": "civil_affairs",
        "purpose": "income_certificate",
        "program_id": "income_certificate",
        "consent_ref": ref,
        "consent_artefact": text,
    }
    fields.update(context)
    return node_pb2.EncryptRequest(context=node_pb2.RequestContext(**fields), pseudonyms=[SUBJECT])


def test_nodes_verify_the_signed_artefact_and_its_scope(tmp_path) -> None:
    import base64

    (tmp_path / "consent_managers.toml").write_text(
        f'[[consent_manager]]\nname = "mydata"\npublic_key = "{base64.b64encode(CM_KEY.public_raw).decode()}"\n'
    )
    managers = ConsentManagers(tmp_path)
    text = artefact()["artefact"]
    import json

    ref = json.loads(text)["body"]["ref"]
    at = T0 + timedelta(hours=1)
    verify_consent(_request(text, ref), managers, lambda: at)
    refusals = [
        (_request("", ref), "no signed consent artefact"),
        (_request(text, "cns_" + "q" * 22), "another consent reference"),
        (_request(text, ref, requester_agency="tax"), "another agency"),
        (_request(text, ref, purpose="dibao"), "another purpose"),
        (_request(text, ref, program_id="dibao"), "does not cover program"),
        (_request(sign_artefact(json.loads(text)["body"], SigningKey.generate("x", "y")), ref), "registered signer"),
    ]
    for request, reason in refusals:
        with pytest.raises(PolicyDenied, match=reason):
            verify_consent(request, managers, lambda: at)
    with pytest.raises(PolicyDenied, match="validity"):
        verify_consent(_request(text, ref), managers, lambda: T0 + timedelta(days=31))
    two = _request(text, ref)
    two.pseudonyms.append("b" * 26)
    with pytest.raises(PolicyDenied, match="exactly one"):
        verify_consent(two, managers, lambda: at)


def test_registry_without_managers_refuses_every_artefact(tmp_path) -> None:
    registry = ConsentRegistry(tmp_path / "c.db")
    with pytest.raises(PolicyDenied, match="no consent manager is registered"):
        registry.register_signed(artefact()["artefact"])
    assert MANAGERS  # the routes' registry has them
