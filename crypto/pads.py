"""One-time pads in the BFV plaintext ring (pure): rho uniform in [0, t) per slot, from SHAKE256.

A node that has sent the gateway Enc(rho) for one pad batch answers later checks with x - rho
mod t alone (a few bytes per slot instead of a ciphertext). The gateway adds the two
homomorphically, Enc(rho) + (x - rho) = Enc(x), and sees nothing but a one-time-padded value: each
slot of a batch pads one value only (nodes/pads.py enforces it). The pads are derived from a
batch seed that never leaves the node's memory, so a restarted node cannot be made to reuse one.

SHAKE256 (FIPS 202) is the XOF; 64-bit words are cut to 58 bits and those >= t rejected, so every
pad is exactly uniform on [0, t) given a uniform XOF stream (t = 2^58 - 835,583: a word is
rejected once in ~3.4e11).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import numpy as np

from crypto.he import PLAIN_MODULUS, SLOTS, centered
from xgate.errors import CryptoError

SEED_BYTES = 32
BATCH_ID_BYTES = 16
_FORMAT = b"xgate-pad/1"
_WORD_MASK = np.uint64((1 << 58) - 1)


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


def new_batch_id() -> bytes:
    return secrets.token_bytes(BATCH_ID_BYTES)


def pads(seed: bytes, element: str) -> np.ndarray:
    """The batch's pad for one data element: SLOTS values uniform in [0, t), as uint64."""
    if len(seed) != SEED_BYTES:
        raise CryptoError(f"a pad seed must be {SEED_BYTES} bytes")
    xof = hashlib.shake_256(b"\x00".join((_FORMAT, seed, element.encode())))
    extra = 64
    while True:
        words = np.frombuffer(xof.digest(8 * (SLOTS + extra)), dtype="<u8") & _WORD_MASK
        kept = words[words < np.uint64(PLAIN_MODULUS)]
        if len(kept) >= SLOTS:
            return kept[:SLOTS].astype(np.uint64)
        extra *= 2  # never seen in practice; a longer prefix of the same stream keeps it deterministic


def padded(values: Sequence[int] | np.ndarray, pad: np.ndarray) -> list[int]:
    """(x - rho) mod t per slot, centred into (-t/2, t/2] as the protocol's sint64 fields carry it."""
    if len(values) != len(pad):
        raise CryptoError("values and pads disagree on the number of slots")
    return centered([int(x) - int(p) for x, p in zip(values, pad.tolist(), strict=True)])


__all__ = ["BATCH_ID_BYTES", "SEED_BYTES", "new_batch_id", "new_seed", "padded", "pads"]
