"""Negative security suite (X-Road proxy-test style): each case one named test over real processes.

Node cases speak gRPC to a running node process of the session federation, as a (fake or real)
gateway; gateway cases put a rogue tax node between a gateway process and the real tax node, or
call the REST API. Every case asserts the refusal (status + reason) and then that the same
process still serves a good request.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import tenseal as ts

from app.devfed import DEV_APPROVAL_REF, GATEWAY_ID, LEGAL_BASIS, DevFederation, start_gateway, write_gateway_config
from app.launcher import Supervisor
from client.sdk import GatewayClient, GatewayError
from client.subjects import read_subjects
from crypto import pki
from crypto.envelope import Envelopes, SigningKey, method_name, sign_message
from crypto.he import RequesterKeys
from crypto.tls import TlsPaths
from gateway.auth import add_user, disable_user
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry
from protos.xgate.v1 import node_pb2
from tests.integration.negative_helpers import (
    ENCRYPT,
    RogueTax,
    build_request,
    encrypt,
    fresh_ids,
    gateway_envelopes,
    health,
    issue_client,
    node_channel,
    party_signer,
    party_tls,
    pin_gateway_directory,
    pinned_directory,
    raw_call,
    refusal,
    revoke_in_federation,
    scratch_ca,
    wait_until_listening,
    write_variant_node_config,
)
from xgate.pseudonym import Pseudonymiser, load_key

pytestmark = pytest.mark.integration
PROGRAMS = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0])
Code = grpc.StatusCode
RPC = "EncryptValues"


@dataclass
class Neg:
    fed: DevFederation
    root: Path
    scratch: Path  # copy of the federation CA: issue/revoke without touching the shared index
    directory: Path  # CA-signed directory pinned to the running parties
    gateway: Envelopes  # the real gateway's signing key + keyring (we act as the gateway)
    gateway_tls: TlsPaths
    tax: str  # address of the shared tax node process
    keys: RequesterKeys  # a requester's HE key pair (the client side of good checks)
    ids: list[str]  # three applicants' national ids

    @property
    def context(self) -> bytes:
        return self.keys.public_context

    def request(self, **kwargs: object) -> node_pb2.EncryptRequest:
        return build_request(self.fed, self.context, self.ids, **kwargs)  # type: ignore[arg-type]

    def signed(self, **kwargs: object) -> tuple[node_pb2.EncryptRequest, bytes]:
        request = self.request(**kwargs)
        return request, self.gateway.sign_request(request, RPC)

    def assert_node_serves(self, address: str | None = None) -> None:
        """A good signed request is answered with a signed, bound, one-chunk ciphertext."""
        request, digest = self.signed()
        response = encrypt(address or self.tax, "tax", self.gateway_tls, request)
        self.gateway.verify_response(response, RPC, digest, agency="tax")
        assert [len(e.ciphertexts) for e in response.elements] == [1]


@pytest.fixture(scope="module")
def neg(federation: DevFederation, tmp_path_factory: pytest.TempPathFactory, requester_keys: RequesterKeys) -> Neg:
    root = tmp_path_factory.mktemp("negative")
    scratch = scratch_ca(federation, root / "scratch-ca")
    directory = pinned_directory(federation, scratch)
    return Neg(
        fed=federation,
        root=root,
        scratch=scratch,
        directory=directory,
        gateway=gateway_envelopes(federation, directory),
        gateway_tls=party_tls(federation, "gateway", GATEWAY_ID),
        tax=f"127.0.0.1:{federation.node_ports['tax']}",
        keys=requester_keys,
        ids=read_subjects(federation.applicants)[:3],
    )


@pytest.fixture(scope="module")
def strict_tax(neg: Neg) -> Iterator[str]:
    """A second tax node process configured like production: no plaintext mode, 2 MB messages."""
    config = write_variant_node_config(
        neg.fed, "tax", neg.root / "strict-tax", neg.directory, allow_plaintext_mode=False, max_message_mb=2
    )
    with Supervisor(log_dir=neg.fed.log_dir) as supervisor:
        child = supervisor.start("node-tax-strict", ["node", "serve", "--config", str(config)])
        yield f"127.0.0.1:{child.port}"


def _variant_gateway(
    neg: Neg, supervisor: Supervisor, name: str, addresses: dict[str, str], **overrides: object
) -> str:
    state = neg.root / name
    state.mkdir(exist_ok=True)
    config = write_gateway_config(
        neg.fed,
        addresses,
        config_path=neg.fed.gateway_dir / f"{name}.toml",
        state_dir=str(state / "state"),
        **overrides,
    )
    pin_gateway_directory(config, neg.directory)
    url = start_gateway(neg.fed, supervisor, config_path=config, name=name)
    wait_until_listening(url)  # the gateway announces "ready" before its socket listens (THREAT_MODEL §8)
    return url


@dataclass
class RogueSetup:
    url: str
    rogue: RogueTax


@pytest.fixture(scope="module")
def rogue(neg: Neg) -> Iterator[RogueSetup]:
    """A gateway process whose 'tax' address is a rogue node forwarding to the real tax node."""
    rogue = RogueTax(neg.fed, neg.tax)
    addresses = {a: f"127.0.0.1:{p}" for a, p in neg.fed.node_ports.items()} | {"tax": f"127.0.0.1:{rogue.port}"}
    try:
        with Supervisor(log_dir=neg.fed.log_dir) as supervisor:
            url = _variant_gateway(neg, supervisor, "gw-neg-rogue", addresses)
            setup = RogueSetup(url, rogue)
            _good_check(neg, url)  # honest pass-through works, and the rogue now holds a previous exchange
            yield setup
    finally:
        rogue.stop()


@pytest.fixture(scope="module")
def limited(neg: Neg) -> Iterator[str]:
    """A gateway process with a tiny per-user rate limit, a 1 MB body limit and no plaintext mode."""
    addresses = {a: f"127.0.0.1:{p}" for a, p in neg.fed.node_ports.items()}
    with Supervisor(log_dir=neg.fed.log_dir) as supervisor:
        yield _variant_gateway(
            neg,
            supervisor,
            "gw-neg-limited",
            addresses,
            rate_per_s=0.001,
            rate_burst=5,
            max_body_mb=1,
            allow_plaintext_mode=False,
        )


def _client(neg: Neg, url: str, label: str = "caseworker", keys: RequesterKeys | None = None) -> GatewayClient:
    pseudonymiser = Pseudonymiser(load_key(neg.fed.pseudonym_key))
    return GatewayClient(
        url,
        neg.fed.api_keys[label],
        pseudonymiser,
        keys=keys or neg.keys,
        verify=str(neg.fed.ca_cert),
        signer=neg.fed.signer(label),
        identity=neg.fed.identity(label),
    )


def _good_check(neg: Neg, url: str, label: str = "caseworker", program: str = "dibao") -> None:
    ids = fresh_ids(3)
    with _client(neg, url, label) as client:
        result = client.check(program, ids, program, LEGAL_BASIS[program], "neg-ok", approval_ref=DEV_APPROVAL_REF)
    assert result.subjects == ids and len(result.passes) == len(PROGRAMS.get(program).criteria)


def _refused_check(
    neg: Neg, url: str, label: str = "caseworker", keys: RequesterKeys | None = None, **kwargs: str
) -> GatewayError:
    with _client(neg, url, label, keys) as client, pytest.raises(GatewayError) as info:
        client.check(
            "dibao", fresh_ids(3), "dibao", LEGAL_BASIS["dibao"], "neg-bad", approval_ref=DEV_APPROVAL_REF, **kwargs
        )
    return info.value


def _http(neg: Neg, url: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(neg.fed.ca_cert)), timeout=60)


def _bearer(neg: Neg, label: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {neg.fed.api_keys[label]}"}


def _check_payload(neg: Neg, **change: object) -> dict[str, object]:
    pseudonymiser = Pseudonymiser(load_key(neg.fed.pseudonym_key))
    payload: dict[str, object] = {
        "program": "dibao",
        "purpose": "dibao",
        "legal_basis": LEGAL_BASIS["dibao"],
        "case_id": "neg-rest",
        "approval_ref": DEV_APPROVAL_REF,
        "pseudonyms": [pseudonymiser.pseudonym(i) for i in fresh_ids(3)],
        "public_context": base64.b64encode(neg.context).decode(),
    }
    return payload | change


def _assert_http_error(response: httpx.Response, status: int, error: str, fragment: str) -> None:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert body["error"] == error, body
    assert fragment in body["message"], body


# ================================================================================================
# Node, transport layer: mutual TLS with the federation CA, CRL, kind and agency checks
# ================================================================================================
def test_refuses_client_cert_from_unknown_ca(neg: Neg) -> None:
    pki.init_ca(neg.root / "rogue-ca", "Rogue federation CA")
    issued = pki.issue(neg.root / "rogue-ca", "gateway", GATEWAY_ID, neg.root / "rogue-gw")
    bad = TlsPaths(issued.cert_path, issued.key_path, neg.fed.ca_cert)
    request, _ = neg.signed()  # a perfectly signed request does not help over a foreign identity
    assert refusal(lambda: encrypt(neg.tax, "tax", bad, request)).code == Code.UNAVAILABLE
    neg.assert_node_serves()


def test_refuses_expired_client_cert(neg: Neg) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    bad, _ = issue_client(neg.fed, neg.scratch, "gateway", GATEWAY_ID, neg.root / "expired", not_before=long_ago)
    request, _ = neg.signed()
    assert refusal(lambda: encrypt(neg.tax, "tax", bad, request)).code == Code.UNAVAILABLE
    neg.assert_node_serves()


def test_refuses_client_cert_not_yet_valid(neg: Neg) -> None:
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    bad, _ = issue_client(neg.fed, neg.scratch, "gateway", GATEWAY_ID, neg.root / "future", not_before=tomorrow)
    request, _ = neg.signed()
    assert refusal(lambda: encrypt(neg.tax, "tax", bad, request)).code == Code.UNAVAILABLE
    neg.assert_node_serves()


def test_refuses_revoked_client_cert(neg: Neg) -> None:
    victim, issued = issue_client(neg.fed, neg.scratch, "gateway", GATEWAY_ID, neg.root / "revoked")
    assert health(neg.tax, "tax", victim).status == "serving"  # accepted before revocation
    revoke_in_federation(neg.fed, neg.scratch, issued.serial)
    request, _ = neg.signed()
    r = refusal(lambda: encrypt(neg.tax, "tax", victim, request))
    assert (r.code, r.error) == (Code.UNAUTHENTICATED, "unauthenticated")
    assert "revoked" in r.message
    neg.assert_node_serves()


def test_refuses_gateway_cert_of_another_agency(neg: Neg) -> None:
    bad, _ = issue_client(neg.fed, neg.scratch, "gateway", "hrss", neg.root / "hrss-gateway")
    request, _ = neg.signed()
    r = refusal(lambda: encrypt(neg.tax, "tax", bad, request))
    assert (r.code, r.error) == (Code.PERMISSION_DENIED, "policy_denied")
    assert "agency 'hrss'" in r.message
    neg.assert_node_serves()


def test_refuses_node_cert_used_as_client(neg: Neg) -> None:
    """Another agency's node (a real, valid certificate) may not call a node."""
    request, _ = neg.signed()
    r = refusal(lambda: encrypt(neg.tax, "tax", party_tls(neg.fed, "node", "hrss"), request))
    assert (r.code, r.error) == (Code.PERMISSION_DENIED, "policy_denied")
    assert "kind 'node'" in r.message
    neg.assert_node_serves()


def test_refuses_missing_client_cert(neg: Neg) -> None:
    request, _ = neg.signed()
    creds = grpc.ssl_channel_credentials(root_certificates=neg.fed.ca_cert.read_bytes())

    def call() -> None:
        with node_channel(neg.tax, "tax", None, creds=creds) as channel:
            channel.unary_unary(ENCRYPT)(request.SerializeToString(), timeout=10)

    assert refusal(call).code == Code.UNAVAILABLE
    neg.assert_node_serves()


def test_refuses_plaintext_grpc_to_tls_node(neg: Neg) -> None:
    request, _ = neg.signed()
    assert refusal(lambda: encrypt(neg.tax, "tax", None, request, timeout=10)).code == Code.UNAVAILABLE
    neg.assert_node_serves()


def test_refuses_node_presenting_another_agencys_certificate(neg: Neg) -> None:
    """The gateway pins <agency>.node.xgate: tax's certificate cannot answer for hrss."""
    assert refusal(lambda: health(neg.tax, "hrss", neg.gateway_tls)).code == Code.UNAVAILABLE
    neg.assert_node_serves()


# ================================================================================================
# Node, message layer: signed envelopes (Ed25519), freshness, replay, request binding
# ================================================================================================
def _crypto_refusal(neg: Neg, request: node_pb2.EncryptRequest, fragment: str, address: str | None = None) -> None:
    r = refusal(lambda: encrypt(address or neg.tax, "tax", neg.gateway_tls, request))
    assert (r.code, r.error) == (Code.UNAUTHENTICATED, "crypto_error"), r.raw  # the message is not authenticated
    assert fragment in r.message, r.raw
    neg.assert_node_serves(address)


def test_refuses_unsigned_request(neg: Neg) -> None:
    _crypto_refusal(neg, neg.request(), "missing envelope")


def test_refuses_bad_signature(neg: Neg) -> None:
    request, _ = neg.signed()
    signature = bytearray(request.envelope.signature)
    signature[7] ^= 0x40
    request.envelope.signature = bytes(signature)
    _crypto_refusal(neg, request, "bad signature")


def test_refuses_body_changed_after_signing(neg: Neg) -> None:
    request, _ = neg.signed()
    request.elements.add(element="tax.monthly_income", if_missing=0)  # ask for more than was signed
    _crypto_refusal(neg, request, "body changed after signing")


def test_refuses_replayed_nonce(neg: Neg) -> None:
    request, digest = neg.signed()
    first = encrypt(neg.tax, "tax", neg.gateway_tls, request)
    neg.gateway.verify_response(first, RPC, digest, agency="tax")
    _crypto_refusal(neg, request, "replayed nonce")  # the very same signed bytes, a second time


def test_refuses_timestamp_older_than_five_minutes(neg: Neg) -> None:
    request = neg.request()
    old = int((dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6)).timestamp() * 1000)
    sign_message(request, ENCRYPT, neg.gateway.signer, now_ms=lambda: old)
    _crypto_refusal(neg, request, "timestamp outside the allowed clock skew")


def test_refuses_timestamp_in_the_future(neg: Neg) -> None:
    request = neg.request()
    ahead = int((dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6)).timestamp() * 1000)
    sign_message(request, ENCRYPT, neg.gateway.signer, now_ms=lambda: ahead)
    _crypto_refusal(neg, request, "timestamp outside the allowed clock skew")


def test_refuses_envelope_signed_for_another_method(neg: Neg) -> None:
    request = neg.request()
    sign_message(request, method_name("ApproveTraining"), neg.gateway.signer)
    _crypto_refusal(neg, request, "method mismatch")


def test_refuses_unknown_signing_key_id(neg: Neg) -> None:
    request = neg.request()
    sign_message(request, ENCRYPT, SigningKey.generate(GATEWAY_ID, "gateway"))  # not in the directory
    _crypto_refusal(neg, request, "unknown key id")


def test_refuses_request_signed_with_another_agencys_key(neg: Neg) -> None:
    request = neg.request()
    sign_message(request, ENCRYPT, party_signer(neg.fed, "node", "hrss"))  # a real, listed key, wrong party
    _crypto_refusal(neg, request, "signer belongs to another agency")


def test_refuses_algorithm_other_than_ed25519(neg: Neg) -> None:
    request, _ = neg.signed()
    request.envelope.alg = "none"
    _crypto_refusal(neg, request, "algorithm not allowed")


def test_refuses_request_carrying_a_response_binding(neg: Neg) -> None:
    """A signed message with request_sha256 set is a response: it cannot be replayed as a request."""
    request = neg.request()
    sign_message(request, ENCRYPT, neg.gateway.signer, secrets.token_bytes(32))
    _crypto_refusal(neg, request, "responses cannot be replayed as requests")


# ================================================================================================
# Node, content layer: protobuf, sizes, subjects, elements, HE contexts, exchange mode
# ================================================================================================
def _invalid(neg: Neg, request: node_pb2.EncryptRequest, code: grpc.StatusCode, error: str, fragment: str) -> None:
    neg.gateway.sign_request(request, RPC)
    r = refusal(lambda: encrypt(neg.tax, "tax", neg.gateway_tls, request))
    assert (r.code, r.error) == (code, error), r.raw
    assert fragment in r.message, r.raw
    neg.assert_node_serves()


def test_refuses_malformed_protobuf(neg: Neg) -> None:
    garbage = b"\x0a\xff\xff\xff\xff\x0f\x12\x03abc"  # field 1, absurd length: not an EncryptRequest
    r = refusal(lambda: raw_call(neg.tax, "tax", neg.gateway_tls, ENCRYPT, garbage))
    assert r.code == Code.INTERNAL and "deserializing" in r.raw.lower(), r.raw
    neg.assert_node_serves()


def test_refuses_oversized_message(neg: Neg, strict_tax: str) -> None:
    request = neg.request()
    request.public_context = os.urandom(3 * 1024 * 1024)  # above the node's max_message_mb = 2
    neg.gateway.sign_request(request, RPC)
    r = refusal(lambda: encrypt(strict_tax, "tax", neg.gateway_tls, request))
    assert r.code == Code.RESOURCE_EXHAUSTED and "larger than max" in r.raw, r.raw
    neg.assert_node_serves(strict_tax)


def test_refuses_oversized_public_context(neg: Neg) -> None:
    request = neg.request()
    request.public_context = os.urandom(2 * 1024 * 1024 + 1)  # within the gRPC limit, above the HE limit
    _invalid(neg, request, Code.RESOURCE_EXHAUSTED, "payload_too_large", "exceeds")


def test_refuses_too_many_subjects(neg: Neg) -> None:
    request = neg.request()
    request.pseudonyms[:] = sorted(
        {base64.b32encode(os.urandom(16)).decode().rstrip("=").lower() for _ in range(100_001)}
    )
    assert len(request.pseudonyms) == 100_001
    _invalid(neg, request, Code.RESOURCE_EXHAUSTED, "payload_too_large", "exceed this node's limit 100000")


def test_refuses_data_element_of_another_agency(neg: Neg) -> None:
    _invalid(
        neg,
        neg.request(elements=("hrss.monthly_pension",)),
        Code.INVALID_ARGUMENT,
        "invalid_input",
        "offers no data element 'hrss.monthly_pension'",
    )


def test_refuses_unknown_data_element(neg: Neg) -> None:
    _invalid(
        neg, neg.request(elements=("tax.everything",)), Code.INVALID_ARGUMENT, "invalid_input", "offers no data element"
    )


def test_refuses_duplicate_pseudonyms(neg: Neg) -> None:
    request = neg.request()
    request.pseudonyms.append(request.pseudonyms[0])
    _invalid(neg, request, Code.INVALID_ARGUMENT, "invalid_input", "repeats a subject")


def test_refuses_national_id_in_place_of_pseudonym(neg: Neg) -> None:
    request = neg.request()
    request.pseudonyms[0] = neg.ids[0]
    neg.gateway.sign_request(request, RPC)
    r = refusal(lambda: encrypt(neg.tax, "tax", neg.gateway_tls, request))
    assert (r.code, r.error) == (Code.INVALID_ARGUMENT, "invalid_input") and "pseudonym" in r.message
    assert neg.ids[0] not in r.raw  # the refusal never echoes the id
    neg.assert_node_serves()


def test_refuses_request_without_purpose(neg: Neg) -> None:
    request = neg.request()
    request.context.purpose = ""
    _invalid(neg, request, Code.INVALID_ARGUMENT, "invalid_input", "lacks purpose")


def test_refuses_public_context_with_secret_key(neg: Neg, requester_keys: RequesterKeys) -> None:
    secret_file = neg.root / "requester.secret"
    requester_keys.save(secret_file)
    request = neg.request()
    request.public_context = secret_file.read_bytes()
    _invalid(neg, request, Code.INVALID_ARGUMENT, "crypto_error", "secret key")


def test_refuses_garbage_public_context(neg: Neg) -> None:
    request = neg.request()
    request.public_context = os.urandom(4096)
    _invalid(neg, request, Code.INVALID_ARGUMENT, "crypto_error", "HE public context is malformed")


def test_refuses_public_context_with_foreign_he_parameters(neg: Neg) -> None:
    foreign = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193)
    foreign.make_context_public()
    request = neg.request()
    request.public_context = bytes(foreign.serialize(save_galois_keys=False, save_relin_keys=False))
    _invalid(neg, request, Code.INVALID_ARGUMENT, "crypto_error", "does not use the federation parameters")


def test_refuses_unsupported_he_params_id(neg: Neg) -> None:
    request = neg.request()
    request.he_params_id = "ckks-n16384/1"
    _invalid(neg, request, Code.INVALID_ARGUMENT, "invalid_input", "unsupported HE parameters")


def test_refuses_plaintext_mode_when_disabled(neg: Neg, strict_tax: str) -> None:
    request, _ = neg.signed(mode=node_pb2.EXCHANGE_MODE_PLAINTEXT)
    r = refusal(lambda: encrypt(strict_tax, "tax", neg.gateway_tls, request))
    assert (r.code, r.error) == (Code.PERMISSION_DENIED, "policy_denied"), r.raw
    assert "plaintext exchange mode is disabled" in r.message
    neg.assert_node_serves(strict_tax)


# ================================================================================================
# Gateway, node answers: a rogue tax node (man in the middle, or holding tax's keys)
# ================================================================================================
def _rogue_refused(neg: Neg, rogue: RogueSetup, behaviour: str, fragment: str, fresh_key: bool = False) -> None:
    """`fresh_key`: the check comes from a key the gateway has no pad batch for, so the nodes open
    one and send their pad ciphertexts (what the ciphertext tampering below has to work on)."""
    rogue.rogue.behaviour = behaviour
    seen = rogue.rogue.seen
    try:
        error = _refused_check(neg, rogue.url, keys=RequesterKeys.generate() if fresh_key else None)
    finally:
        rogue.rogue.behaviour = "honest"
    # The rogue really answered this check (a fresh key's check reaches it twice: the first call
    # only learns that the node needs the context's bytes).
    assert rogue.rogue.seen == seen + (2 if fresh_key else 1)
    assert (error.http_status, error.code) == (502, "node_bad_response"), (error.http_status, error.message)
    assert "agency 'tax'" in error.message and fragment in error.message, error.message
    _good_check(neg, rogue.url)  # the same gateway process serves the next check


def test_refuses_tampered_ciphertext_in_transit(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "flip_ciphertext_bit", "body changed after signing", fresh_key=True)


def test_refuses_corrupt_ciphertext_even_when_signed(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "corrupt_ciphertext_resigned", "sent an invalid ciphertext", fresh_key=True)


def test_refuses_ciphertext_with_foreign_he_parameters(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "foreign_he_params", "not under the requester's HE parameters", fresh_key=True)


def test_refuses_response_bound_to_another_request(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "bound_to_other_request", "response bound to another request")


def test_refuses_replayed_node_response(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "replay_previous_response", "response bound to another request")


def test_refuses_response_signed_with_another_agencys_key(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "signed_by_other_agency", "signer belongs to another agency")


def test_refuses_response_signed_with_the_gateways_own_key(neg: Neg, rogue: RogueSetup) -> None:
    """Reflection: a message signed by the gateway itself is not an answer from tax."""
    _rogue_refused(neg, rogue, "signed_by_gateway_key", "signer belongs to another agency")


def test_refuses_unsigned_node_response(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "unsigned", "missing envelope")


def test_refuses_stale_node_response(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "stale_signature", "timestamp outside the allowed clock skew")


def test_refuses_impostor_agency_in_response(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "impostor_agency", "answered as agency 'hrss'")


def test_refuses_non_protobuf_node_answer(neg: Neg, rogue: RogueSetup) -> None:
    _rogue_refused(neg, rogue, "not_protobuf", "not an EncryptResponse")


def test_refuses_node_with_revoked_certificate(neg: Neg) -> None:
    """A tax node certificate that was revoked (key stolen) must not be accepted by the gateway.

    The host presenting it forwards honestly to the real tax node, so only the revocation is wrong.
    """
    stolen, issued = issue_client(neg.fed, neg.scratch, "node", "tax", neg.root / "revoked-tax")
    revoke_in_federation(neg.fed, neg.scratch, issued.serial)
    impostor = RogueTax(neg.fed, neg.tax, server_tls=stolen)
    addresses = {a: f"127.0.0.1:{p}" for a, p in neg.fed.node_ports.items()} | {"tax": f"127.0.0.1:{impostor.port}"}
    try:
        with Supervisor(log_dir=neg.fed.log_dir) as supervisor:
            url = _variant_gateway(neg, supervisor, "gw-neg-revoked-node", addresses)
            error = _refused_check(neg, url)
            assert error.http_status in (502, 503) and error.code.startswith("node_"), (error.http_status, error.code)
            assert "agency 'tax'" in error.message and "revoked" in error.message, error.message
            _good_check(neg, url, "hrss_caseworker", program="pension_survival")  # a check not touching tax
    finally:
        impostor.stop()


# ================================================================================================
# Gateway, REST edge: authentication, authorisation, limits, input validation
# ================================================================================================
def test_refuses_unauthenticated_rest_call(neg: Neg) -> None:
    with _http(neg, neg.fed.gateway_url) as http:
        _assert_http_error(http.post("/v1/checks", json=_check_payload(neg)), 401, "unauthenticated", "missing API key")
        _assert_http_error(http.get("/v1/programs"), 401, "unauthenticated", "missing API key")
    _good_check(neg, neg.fed.gateway_url)


def test_refuses_wrong_api_key(neg: Neg) -> None:
    real = neg.fed.api_keys["caseworker"]
    forged = real[: real.rindex("_") + 1] + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    with _http(neg, neg.fed.gateway_url) as http:
        response = http.post("/v1/checks", json=_check_payload(neg), headers={"Authorization": f"Bearer {forged}"})
    _assert_http_error(response, 401, "unauthenticated", "invalid API key")
    _good_check(neg, neg.fed.gateway_url)


def test_refuses_non_bearer_authorization(neg: Neg) -> None:
    basic = base64.b64encode(f"cw-zhang:{neg.fed.api_keys['caseworker']}".encode()).decode()
    with _http(neg, neg.fed.gateway_url) as http:
        response = http.post("/v1/checks", json=_check_payload(neg), headers={"Authorization": f"Basic {basic}"})
    _assert_http_error(response, 401, "unauthenticated", "unsupported Authorization scheme")
    _good_check(neg, neg.fed.gateway_url)


def test_refuses_disabled_api_key(neg: Neg) -> None:
    users = neg.fed.gateway_dir / "users.json"
    key = add_user(users, "neg-temp-caseworker", "civil_affairs", "caseworker", "gold")
    with _http(neg, neg.fed.gateway_url) as http:
        assert http.get("/v1/programs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        disable_user(users, "neg-temp-caseworker")  # takes effect without a restart
        response = http.post("/v1/checks", json=_check_payload(neg), headers={"Authorization": f"Bearer {key}"})
    _assert_http_error(response, 401, "unauthenticated", "API key disabled")
    _good_check(neg, neg.fed.gateway_url)


def test_refuses_agency_not_entitled_to_program(neg: Neg) -> None:
    with _http(neg, neg.fed.gateway_url) as http:
        response = http.post("/v1/checks", json=_check_payload(neg), headers=_bearer(neg, "hrss_caseworker"))
    _assert_http_error(response, 403, "policy_denied", "agency 'hrss' may not request program 'dibao'")
    _good_check(neg, neg.fed.gateway_url)


def test_refuses_wrong_role_running_eligibility_check(neg: Neg) -> None:
    """A security officer of the right agency audits exchanges; they may not run checks on people."""
    with _http(neg, neg.fed.gateway_url) as http:
        # signed by the officer's own registered key: the refusal is the policy's, not the signature's
        payload = neg.fed.signed_check("officer", _check_payload(neg))
        response = http.post("/v1/checks", json=payload, headers=_bearer(neg, "officer"))
    assert response.status_code == 403, f"security_officer ran a check: HTTP {response.status_code}"
    _assert_http_error(response, 403, "policy_denied", "deny by default")
    _good_check(neg, neg.fed.gateway_url)


def test_unsigned_check_is_refused_at_the_gateway_and_at_the_nodes(neg: Neg) -> None:
    """THREAT_MODEL I1b: a check its requesting user did not sign, for exactly this question, HE
    context and subjects, is answered by nobody: the gateway refuses it before its policy decision
    (nothing charged), and a node refuses it even from the gateway, before reading anything."""
    signed = neg.fed.signed_check("caseworker", _check_payload(neg))
    other_subjects = {**signed, "pseudonyms": _check_payload(neg)["pseudonyms"]}
    as_someone_else = neg.fed.signed_check("hrss_caseworker", _check_payload(neg))
    with _http(neg, neg.fed.gateway_url) as http:
        for payload, why in (
            (_check_payload(neg), "carries no requester statement"),
            (other_subjects, "the subjects are not the ones the requester signed"),
            (as_someone_else, "signed for another user"),
            ({**signed, "requester_statement": signed["requester_statement"][:-8] + '"}'}, "signature"),
        ):
            response = http.post("/v1/checks", json=payload, headers=_bearer(neg, "caseworker"))
            _assert_http_error(response, 403, "policy_denied", why)
    # At the node: the gateway's own HE context under cw-zhang's statement for the real one, and no statement.
    own = RequesterKeys.generate()
    swapped = neg.request()
    swapped.public_context = own.public_context
    unsigned = neg.request()
    unsigned.context.requester_statement = ""
    for request, why in ((swapped, "HE context named is not the one"), (unsigned, "carries no requester statement")):
        neg.gateway.sign_request(request, RPC)
        r = refusal(lambda request=request: encrypt(neg.tax, "tax", neg.gateway_tls, request))
        assert (r.code, r.error) == (Code.PERMISSION_DENIED, "policy_denied") and why in r.message, r.raw
    neg.assert_node_serves()
    _good_check(neg, neg.fed.gateway_url)


def test_refuses_malformed_json(neg: Neg) -> None:
    with _http(neg, neg.fed.gateway_url) as http:
        headers = _bearer(neg, "caseworker") | {"Content-Type": "application/json"}
        response = http.post("/v1/checks", content=b'{"program": "dibao", "pseudonyms": [', headers=headers)
    _assert_http_error(response, 400, "invalid_input", "JSON")
    _good_check(neg, neg.fed.gateway_url)


def test_refuses_national_ids_instead_of_pseudonyms(neg: Neg) -> None:
    with _http(neg, neg.fed.gateway_url) as http:
        response = http.post(
            "/v1/checks", json=_check_payload(neg, pseudonyms=neg.ids), headers=_bearer(neg, "caseworker")
        )
    _assert_http_error(response, 400, "invalid_input", "pseudonym")
    assert all(i not in response.text for i in neg.ids)  # the gateway never echoes a national id
    _good_check(neg, neg.fed.gateway_url)


def test_refuses_public_context_with_secret_key_at_gateway(neg: Neg, requester_keys: RequesterKeys) -> None:
    secret_file = neg.root / "requester-rest.secret"
    requester_keys.save(secret_file)
    payload = _check_payload(neg, public_context=base64.b64encode(secret_file.read_bytes()).decode())
    with _http(neg, neg.fed.gateway_url) as http:
        response = http.post("/v1/checks", json=payload, headers=_bearer(neg, "caseworker"))
    _assert_http_error(response, 400, "crypto_error", "secret key")
    _good_check(neg, neg.fed.gateway_url)


def test_refuses_oversized_rest_body(neg: Neg, limited: str) -> None:
    payload = _check_payload(neg, case_id="x" * (1024 * 1024 + 1))  # 1 MB limit on this gateway
    with _http(neg, limited) as http:
        response = http.post("/v1/checks", json=payload, headers=_bearer(neg, "caseworker"))
    _assert_http_error(response, 413, "payload_too_large", "exceeds")
    _good_check(neg, limited)


def test_refuses_rate_limit_exceeded(neg: Neg, limited: str) -> None:
    with _http(neg, limited) as http:
        for _ in range(5):  # the burst
            assert http.get("/v1/programs", headers=_bearer(neg, "caseworker_bronze")).status_code == 200
        response = http.get("/v1/programs", headers=_bearer(neg, "caseworker_bronze"))
    _assert_http_error(response, 429, "budget_exhausted", "rate limit exceeded")
    assert int(response.headers["Retry-After"]) > 0
    _good_check(neg, limited)  # other users are not affected


def test_refuses_key_guessing_from_one_address(neg: Neg) -> None:
    """Bad API keys from one address: 401 up to the burst, then 429 for further bad keys, while a
    valid key from that same address is still served (tests/integration/test_auth_attack.py)."""
    addresses = {a: f"127.0.0.1:{p}" for a, p in neg.fed.node_ports.items()}
    with Supervisor(log_dir=neg.fed.log_dir) as supervisor:
        url = _variant_gateway(
            neg, supervisor, "gw-neg-guessing", addresses, failed_auth_per_s=0.001, failed_auth_burst=3
        )
        with _http(neg, url) as http:
            for _ in range(3):
                response = http.get("/v1/programs", headers={"Authorization": "Bearer xg_guess_0000000000000000"})
                _assert_http_error(response, 401, "unauthenticated", "")
            response = http.get("/v1/programs", headers={"Authorization": "Bearer xg_guess_0000000000000001"})
            _assert_http_error(response, 429, "budget_exhausted", "too many failed authentications")
            assert int(response.headers["Retry-After"]) > 0
            assert http.get("/v1/programs", headers=_bearer(neg, "caseworker")).status_code == 200
            assert http.get("/healthz").status_code == 200  # the unauthenticated liveness probe still answers


def test_refuses_plaintext_mode_at_gateway_when_disabled(neg: Neg, limited: str) -> None:
    error = _refused_check(neg, limited, "caseworker_silver", mode="plaintext")
    assert (error.http_status, error.code) == (403, "policy_denied")
    assert "plaintext exchange mode is disabled" in error.message
    _good_check(neg, limited)
