"""Published test vectors through the primitives xgate relies on (tests/vectors/, see SOURCES.md).

* Ed25519 (RFC 8032 section 7.1): through crypto.envelope's own SigningKey / Keyring (pyca/cryptography),
  and through pycryptodome's `eddsa.new(key, "rfc8032")`, the call audit.checkpoints' Signer and
  NoteVerifier make (they only sign checkpoint bodies, so the vectors' messages go through the same call).
* AES-256-GCM (Wycheproof subset): crypto.at_rest.ColumnCipher fixes the nonce (random), the
  plaintext (8 bytes) and the associated data (its blob header), so the vectors go through the call it
  makes, pyca/cryptography's `AESGCM(key).encrypt/decrypt`; the module promises its blobs open with
  pycryptodome too, so the vectors also go through `AES.new(key, AES.MODE_GCM, nonce=...)`.
  Every "invalid" (modified tag) vector must raise.
* HMAC-SHA-256 (RFC 4231 test cases 1-7): xgate.pseudonym.Pseudonymiser takes only 32-byte keys and
  national ids, so the vectors go through its call, the standard library's keyed state
  `hmac.new(key, digestmod=hashlib.sha256)` copied per message; a last test ties the Pseudonymiser's
  output to that same computation. (crypto.masks uses keyed BLAKE2b, not HMAC.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import AES
from Crypto.Signature import eddsa
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audit.checkpoints import raw_public
from crypto.envelope import KeyEntry, Keyring, SigningKey, key_id_for
from xgate.pseudonym import Pseudonymiser, normalise_national_id

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
H = bytes.fromhex


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


ED25519 = _load("ed25519_rfc8032.json")["vectors"]
AES_GCM = [t for g in _load("aes_gcm_wycheproof.json")["testGroups"] for t in g["tests"]]
HMAC_SHA256 = _load("hmac_sha256_rfc4231.json")["vectors"]


def test_vector_files_hold_what_sources_md_says() -> None:
    """The subsets are what SOURCES.md describes (a truncated copy would pass the other tests vacuously)."""
    assert [v["name"] for v in ED25519] == ["TEST 1", "TEST 2", "TEST 3", "TEST 1024", "TEST SHA(abc)"]
    assert [v["test_case"] for v in HMAC_SHA256] == [1, 2, 3, 4, 5, 6, 7]
    assert sum(t["result"] == "valid" for t in AES_GCM) >= 8
    assert sum(t["result"] == "invalid" for t in AES_GCM) >= 4
    assert (VECTORS / "SOURCES.md").is_file()


# -- Ed25519 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("v", ED25519, ids=lambda v: v["name"])
def test_ed25519_envelope_signing_key(v: dict[str, str]) -> None:
    """crypto.envelope: the seed gives the RFC's public key and, deterministically, its signature."""
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(H(v["secret_key"])), "vectors", "node")
    assert key.public_raw.hex() == v["public_key"]
    assert key.key_id == key_id_for(H(v["public_key"]))
    assert key.sign(H(v["message"])).hex() == v["signature"]


@pytest.mark.parametrize("v", ED25519, ids=lambda v: v["name"])
def test_ed25519_envelope_keyring_verifies_and_refuses(v: dict[str, str]) -> None:
    """crypto.envelope's Keyring verifier accepts the RFC signature and refuses a one-bit change."""
    public = H(v["public_key"])
    ring = Keyring([KeyEntry(key_id_for(public), "vectors", "node", public)])
    verifier = ring.verifier(key_id_for(public))
    verifier.verify(H(v["signature"]), H(v["message"]))
    bad = bytearray(H(v["signature"]))
    bad[0] ^= 0x01
    with pytest.raises(InvalidSignature):
        verifier.verify(bytes(bad), H(v["message"]))
    with pytest.raises(InvalidSignature):
        verifier.verify(H(v["signature"]), H(v["message"]) + b"\x00")


@pytest.mark.parametrize("v", ED25519, ids=lambda v: v["name"])
def test_ed25519_checkpoint_library_call(v: dict[str, str]) -> None:
    """audit.checkpoints' call (pycryptodome eddsa, 'rfc8032' mode) signs and verifies the RFC vectors."""
    key = eddsa.import_private_key(H(v["secret_key"]))
    assert raw_public(key).hex() == v["public_key"]
    assert eddsa.new(key, "rfc8032").sign(H(v["message"])).hex() == v["signature"]
    verifier = eddsa.new(eddsa.import_public_key(H(v["public_key"])), "rfc8032")
    verifier.verify(H(v["message"]), H(v["signature"]))
    bad = bytearray(H(v["signature"]))
    bad[-1] ^= 0x01
    with pytest.raises(ValueError):
        verifier.verify(H(v["message"]), bytes(bad))


# -- AES-256-GCM -----------------------------------------------------------------------------


def _gcm_id(t: dict[str, Any]) -> str:
    return f"tc{t['tcId']}-{t['result']}"


@pytest.mark.parametrize("t", AES_GCM, ids=_gcm_id)
def test_aes_gcm_at_rest_library_call(t: dict[str, Any]) -> None:
    """crypto.at_rest's AEAD (pyca AESGCM): valid vectors round-trip exactly, modified tags raise."""
    aead = AESGCM(H(t["key"]))
    sealed = H(t["ct"]) + H(t["tag"])
    if t["result"] == "valid":
        assert aead.encrypt(H(t["iv"]), H(t["msg"]), H(t["aad"])) == sealed
        assert aead.decrypt(H(t["iv"]), sealed, H(t["aad"])) == H(t["msg"])
    else:
        assert t["result"] == "invalid" and "ModifiedTag" in t["flags"]
        with pytest.raises(InvalidTag):
            aead.decrypt(H(t["iv"]), sealed, H(t["aad"]))


@pytest.mark.parametrize("t", AES_GCM, ids=_gcm_id)
def test_aes_gcm_pycryptodome_interop(t: dict[str, Any]) -> None:
    """pycryptodome's GCM (which at_rest promises interoperates) agrees, and refuses the same tags."""
    cipher = AES.new(H(t["key"]), AES.MODE_GCM, nonce=H(t["iv"]))
    cipher.update(H(t["aad"]))
    if t["result"] == "valid":
        ct, tag = cipher.encrypt_and_digest(H(t["msg"]))
        assert (ct, tag) == (H(t["ct"]), H(t["tag"]))
    else:
        with pytest.raises(ValueError, match="MAC check failed"):
            cipher.decrypt_and_verify(H(t["ct"]), H(t["tag"]))


# -- HMAC-SHA-256 ----------------------------------------------------------------------------


def _hmac_like_pseudonymiser(key: bytes, data: bytes) -> bytes:
    keyed = hmac.new(key, digestmod=hashlib.sha256)  # xgate.pseudonym.Pseudonymiser.__init__
    mac = keyed.copy()  # Pseudonymiser.pseudonym
    mac.update(data)
    return mac.digest()


@pytest.mark.parametrize("v", HMAC_SHA256, ids=lambda v: f"case{v['test_case']}")
def test_hmac_sha256_rfc4231(v: dict[str, Any]) -> None:
    got = _hmac_like_pseudonymiser(H(v["key"]), H(v["data"]))
    want = H(v["hmac_sha256"])
    if "truncated_to_bytes" in v:  # case 5: the RFC publishes only the leading 128 bits
        assert v["truncated_to_bytes"] == 16 and len(want) == 16
        got = got[:16]
    else:
        assert len(want) == 32
    assert got == want
    wrong = bytearray(H(v["key"]))
    wrong[0] ^= 0x01
    assert _hmac_like_pseudonymiser(bytes(wrong), H(v["data"]))[: len(want)] != want


def test_pseudonymiser_is_that_hmac_truncated() -> None:
    """The Pseudonymiser's output is the vector-checked HMAC-SHA-256 of the normalised id, 128 bits, base32."""
    key = bytes(range(32))
    national_id = "11010519491231002X"
    mac = _hmac_like_pseudonymiser(key, normalise_national_id(national_id).encode("ascii"))
    want = base64.b32encode(mac[:16]).decode("ascii").rstrip("=").lower()
    assert Pseudonymiser(key).pseudonym(national_id) == want
