"""Arrays sealed end to end between two nodes of a vertical job (AES-256-GCM, NIST SP 800-38D).

The coordinator relays every embedding and gradient of split learning between the feature nodes
and the label holder. Sealed under a key only the two ends hold (agreed from their CA-certified
X25519 job keys, `federated/psi.py` `transport_key`), it relays ciphertext: gradients whose signs
would give the labels away, embeddings from which it could regress features. The associated data
(`Binding`) ties each array to its job and definition (digest), run, kind, step and feature node,
so a sealed array replayed at another step, in another run, to another node or between two ends
that run different definitions under one job id does not open. Opening raises CryptoError.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xgate.errors import CryptoError

FORMAT = b"xgate-sealed-array/1"
KEY_BYTES = 32
_NONCE_BYTES = 12
_DTYPES = (np.float16, np.float32, np.float64)  # what split learning sends: embeddings and gradients


@dataclass(frozen=True)
class Binding:
    """Where a sealed array belongs: it opens only for exactly this binding."""

    job_id: str
    definition: str  # the job's digest
    run_id: str
    kind: str  # emb | grad | heldout
    step: int
    agency: str  # the feature node's

    def associated_data(self) -> bytes:
        fields = (self.job_id, self.definition, self.run_id, self.kind, str(self.step), self.agency)
        return b"\x00".join((FORMAT, *(f.encode() for f in fields)))

    def __str__(self) -> str:
        return f"the {self.kind} of step {self.step} for '{self.agency}'"


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise CryptoError(f"a sealing key must be {KEY_BYTES} bytes")


def seal(key: bytes, array: np.ndarray, binding: Binding) -> np.ndarray:
    """`array` (a float matrix) as uint8: nonce, then its .npy bytes encrypted and authenticated."""
    _check_key(key)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, buffer.getvalue(), binding.associated_data())
    return np.frombuffer(nonce + sealed, dtype=np.uint8)


def open_sealed(key: bytes, sealed: np.ndarray, binding: Binding) -> np.ndarray:
    """The array `seal` sealed with this key for exactly this binding."""
    _check_key(key)
    raw = np.asarray(sealed)
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size <= _NONCE_BYTES:
        raise CryptoError(f"{binding} is not a sealed array")
    data = raw.tobytes()
    try:
        plain = AESGCM(key).decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], binding.associated_data())
    except InvalidTag:
        raise CryptoError(f"{binding} does not open: not sealed by the other end for this job, run and step") from None
    try:
        array = np.asarray(np.load(io.BytesIO(plain), allow_pickle=False))
    except ValueError as exc:
        raise CryptoError(f"{binding} opened but is not an array: {exc}") from None
    if array.dtype.type not in _DTYPES or array.ndim != 2:
        raise CryptoError(f"{binding} opened but is {array.dtype} of {array.ndim} dimensions, not a float matrix")
    return array
