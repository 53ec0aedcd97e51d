"""Keyed draws that repeat (pure): uniform 64-bit words from keyed BLAKE2b (RFC 7693) over
(domain, item).

The same key, domain and item always give the same word, and without the key the words are
pseudorandom. A node draws noise this way where a fresh draw on every request would let a
requester average the noise away by asking again (federated/label_dp.py: the label holder's
randomized response, fixed per label element and ε).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import numpy as np

from xgate.errors import CryptoError

KEY_BYTES = 32
_FORMAT = b"xgate-keyed-draws/1"


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def words(key: bytes, domain: str, items: Sequence[str]) -> np.ndarray:
    """One uint64 word per item, in order."""
    if len(key) != KEY_BYTES:
        raise CryptoError(f"a draw key must be {KEY_BYTES} bytes")
    prefix = b"\x00".join((_FORMAT, domain.encode(), b""))
    raw = b"".join(hashlib.blake2b(prefix + item.encode(), key=key, digest_size=8).digest() for item in items)
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64) if raw else np.zeros(0, np.uint64)
