"""Signed artefacts: a JSON body signed with Ed25519 by a registered signer (pyca/cryptography).

Used for consent artefacts (DEPA / MyData style): a consent manager acting for the data subject
signs what the subject agreed to, and the gateway and every node verify it against the registered
consent managers' public keys before the consent counts. Format (versioned):

    {"format": "xgate-consent/1", "key_id": "<16 hex>", "body": {...}, "signature": "<base64>"}

The signature covers b"xgate-consent/1\\0" + the body's canonical JSON (sorted keys, no spaces,
UTF-8), so a body cannot be re-used under another format or with one field changed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from crypto.envelope import SigningKey, key_id_for
from xgate.errors import CryptoError

CONSENT_FORMAT = "xgate-consent/1"
MAX_ARTEFACT_BYTES = 16 * 1024


@dataclass(frozen=True)
class Signer:
    """A registered artefact signer: its key id, name and raw 32-byte Ed25519 public key."""

    key_id: str
    name: str
    public_raw: bytes

    @classmethod
    def of(cls, name: str, public_b64: str) -> Signer:
        try:
            raw = base64.b64decode(public_b64, validate=True)
            Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError) as exc:
            raise CryptoError(f"signer '{name}': public_key is not a base64 Ed25519 public key") from exc
        return cls(key_id_for(raw), name, raw)


def canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_artefact(body: Mapping[str, Any], key: SigningKey, fmt: str = CONSENT_FORMAT) -> str:
    signature = key.sign(fmt.encode() + b"\0" + canonical(body))
    return json.dumps(
        {"format": fmt, "key_id": key.key_id, "body": dict(body), "signature": base64.b64encode(signature).decode()},
        sort_keys=True,
        ensure_ascii=False,
    )


def verify_artefact(
    text: str, signers: Mapping[str, Signer], fmt: str = CONSENT_FORMAT, max_bytes: int = MAX_ARTEFACT_BYTES
) -> tuple[Signer, dict[str, Any]]:
    """The signer and the body, or CryptoError naming what is wrong."""
    if len(text.encode()) > max_bytes:
        raise CryptoError(f"artefact exceeds {max_bytes} bytes")
    try:
        outer = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack
        raise CryptoError("artefact is not JSON") from None
    if not isinstance(outer, dict) or set(outer) != {"format", "key_id", "body", "signature"}:
        raise CryptoError("artefact must have exactly format, key_id, body and signature")
    if outer["format"] != fmt:
        raise CryptoError(f"artefact format must be {fmt}")
    if not isinstance(outer["body"], dict):
        raise CryptoError("artefact body must be an object")
    signer = signers.get(str(outer["key_id"]))
    if signer is None:
        raise CryptoError("artefact is not signed by a registered signer")
    try:
        signature = base64.b64decode(str(outer["signature"]), validate=True)
        Ed25519PublicKey.from_public_bytes(signer.public_raw).verify(
            signature, fmt.encode() + b"\0" + canonical(outer["body"])
        )
    except (binascii.Error, ValueError, InvalidSignature):
        raise CryptoError("artefact signature does not verify") from None
    return signer, outer["body"]
