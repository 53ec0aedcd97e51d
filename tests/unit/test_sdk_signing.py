"""The SDK signs every check with its requester key (policies/check_statements.py): a check made
without one is refused before anything is sent, and the statement it sends verifies for exactly the
body it sends, with the identity the gateway states when none is given."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import httpx
import pytest

from client.sdk import GatewayClient
from crypto.artefacts import Signer
from crypto.envelope import SigningKey
from policies.check_statements import Question, RequesterKey, verify_statement
from xgate.errors import InvalidInput
from xgate.pseudonym import Pseudonymiser

ALICE, BOB = "110101199003071233", "11010519491231002X"  # valid GB 11643 ids (synthetic)
KEY = SigningKey.generate("civil_affairs", "requester")


def _client(sent: list[httpx.Request], signer: SigningKey | None = KEY) -> GatewayClient:
    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/v1/whoami":
            return httpx.Response(200, json={"user": "cw-zhang", "agency": "civil_affairs"})
        return httpx.Response(403, json={"error": "policy_denied", "message": "stop here", "details": {}})

    client = GatewayClient("https://gw.test", "key", Pseudonymiser(b"\x02" * 32), signer=signer)
    client._http = httpx.Client(transport=httpx.MockTransport(handle))
    return client


def test_a_check_without_a_signing_key_is_refused_before_anything_is_sent() -> None:
    sent: list[httpx.Request] = []
    with pytest.raises(InvalidInput, match=r"no requester signing key.*xgate requester keygen"):
        _client(sent, signer=None).check("dibao", [ALICE], "dibao", "SAR-2014-art-12", "C-1", mode="plaintext")
    assert sent == []


def test_the_statement_sent_verifies_for_the_body_sent_and_the_stated_identity() -> None:
    sent: list[httpx.Request] = []
    client = _client(sent)
    for _ in range(2):  # the identity is asked once
        with pytest.raises(Exception, match="stop here"):
            client.check("dibao", [ALICE, BOB], "dibao", "SAR-2014-art-12", "C-1", approval_ref="", mode="he")
    assert [r.url.path for r in sent] == ["/v1/whoami", "/v1/checks", "/v1/checks"]
    body = json.loads(sent[1].content)
    signer = Signer.of("cw-zhang", base64.b64encode(KEY.public_raw).decode())
    registry = {signer.key_id: RequesterKey(signer, "cw-zhang", "civil_affairs")}
    # the subjects in another order: the digest is over the sorted list
    reordered = {**body, "pseudonyms": list(reversed(body["pseudonyms"]))}
    question = Question.of("cw-zhang", "civil_affairs", reordered, body["context_fingerprint"])
    assert verify_statement(body["requester_statement"], registry, question, datetime.now(UTC)).user == "cw-zhang"
