"""Golden files pin the wire formats: xgate-envelope/1 (crypto.envelope) and the signed checkpoint note
(audit.checkpoints, C2SP signed-note + tlog-cosignature/v1).

The committed files in tests/vectors/golden/ are compared, never regenerated here
(tests/vectors/make_golden.py rewrites them, on purpose only):
  (a) the current code, given make_golden's fixed inputs and keys, produces the same bytes;
  (b) the current code verifies the committed files from their public keys (golden/keys.json) alone;
  (c) every one-byte change to a committed file is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from Crypto.Signature import eddsa
from google.protobuf.message import DecodeError

from audit.checkpoints import CosignatureVerifier, NoteVerifier, parse_signed_note
from crypto.envelope import KeyEntry, Keyring, VerifiedEnvelope, key_id_for, request_digest, verify_message
from protos.xgate.v1 import node_pb2 as pb
from tests.vectors import make_golden
from xgate.errors import EnvelopeRejected, IntegrityError

GOLDEN = Path(__file__).resolve().parents[1] / "vectors" / "golden"
KEYS: dict[str, Any] = json.loads((GOLDEN / make_golden.KEYS_FILE).read_text())
ENV = KEYS["envelope"]
CP = KEYS["checkpoint"]
REQUEST = (GOLDEN / make_golden.REQUEST_FILE).read_bytes()
RESPONSE = (GOLDEN / make_golden.RESPONSE_FILE).read_bytes()
NOTE = (GOLDEN / make_golden.CHECKPOINT_FILE).read_bytes()


def _keyring() -> Keyring:
    entries = []
    for agency, kind in (("gateway", "gateway"), ("node", "node")):
        public = bytes.fromhex(ENV[agency]["public_key"])
        assert key_id_for(public) == ENV[agency]["key_id"]
        entries.append(KeyEntry(ENV[agency]["key_id"], "tax" if agency == "node" else "gateway", kind, public))
    return Keyring(entries)


KEYRING = _keyring()
LOG = NoteVerifier(CP["log"]["name"], eddsa.import_public_key(bytes.fromhex(CP["log"]["public_key"])))
WITNESS = CosignatureVerifier(
    CP["witness"]["name"], eddsa.import_public_key(bytes.fromhex(CP["witness"]["public_key"]))
)


def _verify_request(data: bytes) -> VerifiedEnvelope:
    msg = pb.EncryptRequest.FromString(data)
    return verify_message(
        msg, ENV["method"], KEYRING, None, ENV["request_time_ms"], expected_agency="gateway", expected_kinds={"gateway"}
    )


def _verify_response(data: bytes, request: bytes = REQUEST) -> VerifiedEnvelope:
    msg = pb.EncryptResponse.FromString(data)
    bound = request_digest(pb.EncryptRequest.FromString(request))
    return verify_message(
        msg,
        ENV["method"],
        KEYRING,
        None,
        ENV["response_time_ms"],
        bound,
        expected_agency="tax",
        expected_kinds={"node"},
    )


def _verify_note(data: bytes) -> int:
    """Log signature and witness cosignature; the text is decoded strictly, as nodes/audit.py does."""
    text = data.decode("utf-8", errors="strict")
    LOG.verify(text)
    return WITNESS.verify(text)


def _one_byte_changes(data: bytes) -> list[tuple[int, bytes]]:
    """Every position, changed by flipping its lowest bit (the smallest change a byte can take)."""
    out = []
    for i in range(len(data)):
        changed = bytearray(data)
        changed[i] ^= 0x01
        out.append((i, bytes(changed)))
    return out


# -- (a) the current code produces the committed bytes --------------------------------------


@pytest.mark.parametrize("name", sorted(make_golden.outputs()))
def test_current_code_reproduces_golden_file(name: str) -> None:
    produced = make_golden.outputs()[name]
    committed = (GOLDEN / name).read_bytes()
    assert produced == committed, (
        f"{name}: the current code no longer produces the committed format; if the change is intended, "
        "bump the format version and regenerate with `python -m tests.vectors.make_golden`"
    )


# -- (b) the current code verifies the committed files --------------------------------------


def test_golden_envelope_request_verifies() -> None:
    verified = _verify_request(REQUEST)
    assert (verified.key_id, verified.agency, verified.kind) == (ENV["gateway"]["key_id"], "gateway", "gateway")
    assert verified.timestamp_ms == ENV["request_time_ms"]
    assert pb.EncryptRequest.FromString(REQUEST).envelope.version == "xgate-envelope/1"


def test_golden_envelope_response_verifies_bound_to_the_golden_request() -> None:
    verified = _verify_response(RESPONSE)
    assert (verified.key_id, verified.agency, verified.kind) == (ENV["node"]["key_id"], "tax", "node")
    msg = pb.EncryptResponse.FromString(RESPONSE)
    assert list(msg.elements[0].plain_values) == [1200, -5]


def test_golden_checkpoint_verifies() -> None:
    assert _verify_note(NOTE) == CP["cosign_time"]
    signed = parse_signed_note(NOTE.decode())
    assert (signed.checkpoint.origin, signed.checkpoint.size) == (CP["log"]["name"], len(make_golden.LEAVES))


# -- (c) one-byte changes are refused --------------------------------------------------------


def _accepted(verify: Any, data: bytes, refusals: tuple[type[Exception], ...]) -> list[int]:
    accepted = []
    for i, changed in _one_byte_changes(data):
        try:
            verify(changed)
        except refusals:
            continue
        accepted.append(i)
    return accepted


def test_every_one_byte_change_to_the_golden_request_is_refused() -> None:
    assert not _accepted(_verify_request, REQUEST, (EnvelopeRejected, DecodeError))


def test_every_one_byte_change_to_the_golden_response_is_refused() -> None:
    assert not _accepted(_verify_response, RESPONSE, (EnvelopeRejected, DecodeError))


def test_the_golden_response_is_refused_for_a_changed_request_envelope() -> None:
    """The response binds the request's whole signed envelope (which commits to the request body through
    body_sha256): a one-byte change anywhere in that envelope unbinds the response."""
    envelope = pb.EncryptRequest.FromString(REQUEST).envelope.SerializeToString(deterministic=True)
    start = REQUEST.index(envelope)
    accepted = []
    for i, changed in _one_byte_changes(REQUEST)[start : start + len(envelope)]:
        try:
            _verify_response(RESPONSE, request=changed)
        except (EnvelopeRejected, DecodeError):
            continue
        accepted.append(i)
    assert not accepted


def test_every_one_byte_change_to_the_golden_checkpoint_is_refused() -> None:
    assert not _accepted(_verify_note, NOTE, (IntegrityError, UnicodeDecodeError))


@pytest.mark.parametrize("signer", ["log", "witness"])
def test_signature_lines_have_one_text_only(signer: str) -> None:
    """The last base64 character before the padding carries unused bits: every other character there
    must be refused, or one signature would have several note texts (the line is not canonical)."""
    name = CP[signer]["name"].encode()
    line_start = NOTE.index(b"\xe2\x80\x94 " + name + b" ")
    last = NOTE.index(b"=", line_start) - 1
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    accepted = []
    for c in alphabet:
        if c == NOTE[last]:
            continue
        changed = bytearray(NOTE)
        changed[last] = c
        try:
            _verify_note(bytes(changed))
        except IntegrityError:
            continue
        accepted.append(chr(c))
    assert not accepted
