"""Per-subject masks for the sign-only comparison (pure, no I/O).

The gateway turns a criterion's difference d into v = r*d + s' with 1 <= r < 2^32 and
0 <= s' < r, so the requester learns sign(v) = sign(d) and as little as we can manage of |d|:

* r and s' come from a keyed PRF (BLAKE2b with the gateway's mask key, RFC 7693) over
  (program, criterion, epoch, pseudonym). Re-asking the same question in the same epoch yields
  the same v, so repeating a query reveals nothing new; a new epoch draws fresh masks, and the
  probing budget bounds how many epochs an attacker sees.
* r is log-uniform over [1, 2^32) rather than uniform: log2|v| = log2 r + log2|d| (+ small),
  and with log2 r spread over 32 bits while log2|d| <= 24, most observations are consistent with
  every possible magnitude of d. docs/PROTOCOL.md quantifies what remains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from crypto.he import MASK_BITS

MASK_KEY_BYTES = 32
_DOMAIN = b"xgate-mask/1"


def derive_masks(
    key: bytes, program: str, criterion: str, epoch: int, pseudonyms: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Return (r, s') as int64 arrays, one entry per pseudonym, in the given order."""
    if len(key) != MASK_KEY_BYTES:
        raise ValueError(f"mask key must be {MASK_KEY_BYTES} bytes")
    prefix = b"\x00".join((_DOMAIN, program.encode(), criterion.encode(), str(epoch).encode(), b""))
    raw = bytearray()
    for pseudonym in pseudonyms:
        raw += hashlib.blake2b(prefix + pseudonym.encode(), key=key, digest_size=16).digest()
    words = np.frombuffer(bytes(raw), dtype="<u8").reshape(-1, 2) if raw else np.zeros((0, 2), np.uint64)
    # u in [0, 1) from the top 53 bits (exactly representable as float64).
    u = (words[:, 0] >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    r = np.floor(np.exp2(u * MASK_BITS)).astype(np.int64)
    r = np.clip(r, 1, (1 << MASK_BITS) - 1)
    # s' uniform in [0, r): 64 random bits mod r has bias below 2^-32.
    s = (words[:, 1] % r.astype(np.uint64)).astype(np.int64)
    return r, s


def epoch_of(unix_seconds: float, epoch_seconds: int) -> int:
    """The masking epoch a moment falls in (epochs are fixed per program)."""
    if epoch_seconds <= 0:
        raise ValueError("epoch length must be positive")
    return int(unix_seconds // epoch_seconds)


def derive_permutations(key: bytes, program: str, epoch: int, pseudonyms: Sequence[str], k: int) -> np.ndarray:
    """One permutation of range(k) per subject (rows), keyed like the masks so repeats agree."""
    if len(key) != MASK_KEY_BYTES:
        raise ValueError(f"mask key must be {MASK_KEY_BYTES} bytes")
    prefix = b"\x00".join((_DOMAIN, b"criteria-order", program.encode(), str(epoch).encode(), b""))
    rows = np.empty((len(pseudonyms), k), dtype=np.int64)
    for j, pseudonym in enumerate(pseudonyms):
        digest = hashlib.blake2b(prefix + pseudonym.encode(), key=key, digest_size=8 * k).digest()
        rows[j] = np.argsort(np.frombuffer(digest, dtype="<u8"), kind="stable")
    return rows
