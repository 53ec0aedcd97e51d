"""Signed envelopes: happy paths and one named test per refusal reason."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.envelope import (
    KeyEntry,
    Keyring,
    SigningKey,
    method_name,
    request_digest,
    sign_message,
    verify_message,
)
from crypto.replay import ReplayGuard
from protos.xgate.v1 import node_pb2
from xgate.errors import ConfigError, CryptoError, InvalidInput

M = method_name("EncryptValues")
T0 = 1_700_000_000_000
GW = SigningKey.generate("gateway", "gateway")
TAX = SigningKey.generate("tax", "node")
RING = Keyring.of(GW, TAX)


def _request() -> node_pb2.EncryptRequest:
    req = node_pb2.EncryptRequest(pseudonyms=["p1", "p2"], public_context=b"\x01" * 1024, he_params_id="bfv")
    req.context.request_id = "r-1"
    req.context.purpose = "dibao"
    return req


def _signed(now: int = T0) -> node_pb2.EncryptRequest:
    req = _request()
    sign_message(req, M, GW, now_ms=lambda: now)
    return req


def _response(req: node_pb2.EncryptRequest, now: int = T0) -> node_pb2.EncryptResponse:
    resp = node_pb2.EncryptResponse(agency="tax", request_id="r-1")
    resp.elements.add(element="tax.monthly_income", ciphertexts=[b"ct"])
    sign_message(resp, M, TAX, request_digest(req), now_ms=lambda: now)
    return resp


def _refuse(msg, match: str, **kw) -> None:
    kw.setdefault("now_ms", T0)
    with pytest.raises(CryptoError, match=match):
        verify_message(msg, kw.pop("method", M), kw.pop("keyring", RING), kw.pop("guard", ReplayGuard()), **kw)


def test_request_verifies_and_names_signer() -> None:
    v = verify_message(
        _signed(), M, RING, ReplayGuard(), now_ms=T0, expected_agency="gateway", expected_kinds={"gateway"}
    )
    assert (v.agency, v.kind, v.key_id) == ("gateway", "gateway", GW.key_id)


def test_response_bound_to_its_request_verifies() -> None:
    req = _signed()
    v = verify_message(_response(req), M, RING, ReplayGuard(), now_ms=T0, expected_request_digest=request_digest(req))
    assert v.agency == "tax"


def test_envelope_fields_filled() -> None:
    env = _signed().envelope
    assert (env.version, env.alg, env.method) == ("xgate-envelope/1", "ed25519", M)
    assert len(env.nonce) == 16 and len(env.body_sha256) == 32 and len(env.signature) == 64
    assert env.request_sha256 == b""


def test_refuse_missing_envelope() -> None:
    _refuse(_request(), "missing envelope")


def test_refuse_unknown_version() -> None:
    req = _signed()
    req.envelope.version = "xgate-envelope/0"
    _refuse(req, "unsupported envelope version")


def test_refuse_algorithm_not_allowed() -> None:
    req = _signed()
    req.envelope.alg = "none"
    _refuse(req, "algorithm not allowed")


def test_refuse_method_mismatch() -> None:
    _refuse(_signed(), "method mismatch", method=method_name("ApproveTraining"))


def test_refuse_unknown_key_id() -> None:
    _refuse(_signed(), "unknown key id", keyring=Keyring.of(TAX))


def test_refuse_revoked_key() -> None:
    ring = Keyring([KeyEntry(GW.key_id, "gateway", "gateway", GW.public_raw, revoked=True)])
    _refuse(_signed(), "revoked", keyring=ring)


def test_refuse_signer_of_another_agency() -> None:
    _refuse(_signed(), "another agency", expected_agency="tax")


def test_refuse_signer_of_wrong_kind() -> None:
    _refuse(_signed(), "not allowed to send", expected_kinds={"node"})


def test_refuse_bad_nonce_length() -> None:
    req = _signed()
    req.envelope.nonce = b"short"
    _refuse(req, "nonce")


def test_refuse_timestamp_too_old() -> None:
    _refuse(_signed(now=T0 - 5 * 60 * 1000 - 1), "clock skew")


def test_refuse_timestamp_in_future() -> None:
    _refuse(_signed(now=T0 + 5 * 60 * 1000 + 1), "clock skew")


def test_timestamp_at_skew_edge_accepted() -> None:
    verify_message(_signed(now=T0 - 5 * 60 * 1000), M, RING, ReplayGuard(), now_ms=T0)


def test_refuse_bad_signature() -> None:
    req = _signed()
    sig = bytearray(req.envelope.signature)
    sig[0] ^= 1
    req.envelope.signature = bytes(sig)
    _refuse(req, "bad signature")


def test_refuse_signature_by_impostor_key_with_victims_key_id() -> None:
    req = _request()
    sign_message(req, M, SigningKey.generate("gateway", "gateway"), now_ms=lambda: T0)
    req.envelope.key_id = GW.key_id
    _refuse(req, "bad signature")


def test_refuse_tampered_envelope_field() -> None:
    req = _signed()
    req.envelope.timestamp_ms += 1
    _refuse(req, "bad signature")


def test_refuse_body_changed() -> None:
    req = _signed()
    req.pseudonyms.append("p3")
    _refuse(req, "body changed")


def test_refuse_response_bound_to_another_request() -> None:
    other = _signed()
    _refuse(_response(_signed()), "bound to another request", expected_request_digest=request_digest(other))


def test_refuse_response_without_binding() -> None:
    resp = node_pb2.EncryptResponse(agency="tax")
    sign_message(resp, M, TAX, now_ms=lambda: T0)
    _refuse(resp, "bound to another request", expected_request_digest=request_digest(_signed()))


def test_refuse_response_replayed_as_request() -> None:
    _refuse(_response(_signed()), "responses cannot be replayed as requests")


def test_refuse_replayed_nonce() -> None:
    req, guard = _signed(), ReplayGuard()
    verify_message(req, M, RING, guard, now_ms=T0)
    _refuse(req, "replayed nonce", guard=guard)


def test_refuse_when_replay_cache_full() -> None:
    guard = ReplayGuard(max_entries=1)
    verify_message(_signed(), M, RING, guard, now_ms=T0)
    _refuse(_signed(), "replay cache full", guard=guard)


def test_forged_message_does_not_consume_nonce() -> None:
    req, guard = _signed(), ReplayGuard()
    forged = node_pb2.EncryptRequest()
    forged.CopyFrom(req)
    forged.pseudonyms.append("evil")
    _refuse(forged, "body changed", guard=guard)
    verify_message(req, M, RING, guard, now_ms=T0)  # the genuine message still goes through once


def test_request_digest_needs_signed_message() -> None:
    with pytest.raises(CryptoError):
        request_digest(_request())


def test_replay_guard_forgets_after_window() -> None:
    guard = ReplayGuard(skew_ms=1000)
    guard.check_and_record("k", b"n" * 16, T0, T0)
    assert len(guard) == 1
    guard.check_and_record("k", b"m" * 16, T0 + 5000, T0 + 5000)
    assert len(guard) == 1  # the first entry expired: memory stays bounded


def test_replay_guard_threadsafe_single_acceptance() -> None:
    guard, accepted = ReplayGuard(), []

    def worker() -> None:
        try:
            guard.check_and_record("k", b"x" * 16, T0, T0)
            accepted.append(1)
        except CryptoError:
            pass

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 1


def test_signing_key_save_load(tmp_path: Path) -> None:
    GW.save(tmp_path / "gw.sign.pem")
    loaded = SigningKey.load(tmp_path / "gw.sign.pem")
    assert (loaded.key_id, loaded.agency, loaded.kind) == (GW.key_id, "gateway", "gateway")
    assert (tmp_path / "gw.sign.pem").stat().st_mode & 0o077 == 0


def test_keyring_refuses_mismatched_key_id() -> None:
    with pytest.raises(ConfigError):
        Keyring([KeyEntry("0" * 16, "tax", "node", TAX.public_raw)])


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=1023))
def test_any_body_change_is_refused(extra: bytes, pos: int) -> None:
    req = _signed()
    ctx = bytearray(req.public_context)
    ctx[pos] ^= extra[0] or 1
    req.public_context = bytes(ctx)
    _refuse(req, "body changed")


def test_envelopes_facade_round_trip_and_cross_agency_refusal() -> None:
    from crypto.envelope import Envelopes

    gateway, node = Envelopes(GW, RING, now_ms=lambda: T0), Envelopes(TAX, RING, now_ms=lambda: T0)
    req = _request()
    digest = gateway.sign_request(req, "EncryptValues")
    assert node.verify_request(req, "EncryptValues", agency="gateway", kinds={"gateway"}).agency == "gateway"
    resp = node_pb2.EncryptResponse(agency="tax")
    node.sign_response(resp, "EncryptValues", req)
    assert gateway.verify_response(resp, "EncryptValues", digest, agency="tax").agency == "tax"
    resp2 = node_pb2.EncryptResponse(agency="tax")
    node.sign_response(resp2, "EncryptValues", req)
    with pytest.raises(CryptoError, match="another agency"):
        gateway.verify_response(resp2, "EncryptValues", digest, agency="hrss")


@pytest.mark.parametrize("owner", ['x"]\nevil = "1', 'x"', "", "../x", "a\nb", "x" * 65, "alice\n"])
def test_a_key_owner_that_could_break_a_toml_entry_or_the_key_file_is_refused(owner: str) -> None:
    """`approval keygen --name 'x"]\\nevil = "1'` printed that into the approvers.toml entry an
    operator appends (and `train keygen --user ../x` was accepted)."""
    with pytest.raises(InvalidInput, match="a key's owner must be 1-64 of letters"):
        SigningKey.generate(owner, "approver")
    assert SigningKey.generate("an-liu@tax.gov", "job-signing").agency == "an-liu@tax.gov"
