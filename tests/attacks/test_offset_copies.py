"""Attack: read the exact sum from the slots a result does not name.

A result ciphertext of n subjects has N = 8192 slots; the client is told to decrypt the first n.
TenSEAL encrypts a vector shorter than N by filling the other slots with copies of it, and the
gateway adds an encryption of the masking offset o = s' - direction*r*T. So every slot past n
held a copy of o = s' + r*T (for "at most T") beside the masked value v = r*(T - S) + s' in slot
i. A modified client relabels the ciphertext to N slots (one protobuf field) and decrypts:
o - v = r*S exactly, and o / T = r + s'/T pins r (s' < r), so S comes out within 1/T of itself:
the exact 低保 income sum instead of a sign. Now the offset is encrypted with zeros in every
other slot (crypto/he.py `_encrypt_exactly`), and all slots past n decrypt to 0.

Real keys and masks (crypto/masks.py), the gateway's own masking (PublicContext.mask_criterion).
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from crypto.he import SLOTS, PublicContext, RequesterKeys, _relabelled, centered
from crypto.masks import derive_masks

THRESHOLD = 1100
SUMS = [0, 480, 1099, 1100, 1101, 2500, 9000, 60000]
PSEUDONYMS = [f"{i:026d}".translate(str.maketrans("0123456789", "abcdefghij")) for i in range(len(SUMS))]
KEY = b"\x07" * 32


def _every_slot(keys: RequesterKeys, result: bytes) -> np.ndarray:
    """What a modified client decrypts: the result relabelled to all N slots."""
    vector = ts.bfv_vector_from(keys._ctx, _relabelled(result, SLOTS))
    return np.asarray(vector.decrypt(), dtype=object)


def _sums_from_copies(decrypted: np.ndarray, n: int) -> list[float]:
    """The attack: o - v = r*S, r from o / T; S = (o - v) / r for each subject i."""
    estimates = []
    for i in range(n):
        v, o = int(decrypted[i]), int(decrypted[n + i])
        r = max(1, o // THRESHOLD)
        estimates.append((o - v) / r)
    return estimates


def _masked(context: PublicContext) -> tuple[bytes, np.ndarray, np.ndarray]:
    r, s = derive_masks(KEY, "income<=1100", 7, PSEUDONYMS, 2**17)
    term = context.load(context.encrypt(SUMS), len(SUMS))
    return context.mask_criterion([term], -1, THRESHOLD, r, s), r, s


def test_the_slots_a_result_does_not_name_decrypt_to_zero(
    requester_keys: RequesterKeys, public_context: PublicContext
) -> None:
    n = len(SUMS)
    result, _, _ = _masked(public_context)
    decrypted = _every_slot(requester_keys, result)
    assert decrypted[:n].any()  # the named slots carry the masked values
    assert not decrypted[n:].any()  # nothing else: no offset copies to read r and S from
    estimates = _sums_from_copies(decrypted, n)
    assert sum(abs(e - s) <= s / THRESHOLD + 1 for e, s in zip(estimates, SUMS, strict=True)) <= 1  # S = 0 only


def test_positive_control_offset_copies_give_every_sum_away(
    requester_keys: RequesterKeys, public_context: PublicContext
) -> None:
    """The gateway's masking as it was: the offset encrypted as TenSEAL fills short vectors."""
    n = len(SUMS)
    r, s = derive_masks(KEY, "income<=1100", 7, PSEUDONYMS, 2**17)
    ctx = public_context._ctx
    total = ts.bfv_vector(ctx, SUMS)
    total.mul_((-r).astype(np.int64).tolist())
    offset = s.astype(object) + r.astype(object) * THRESHOLD
    total.add_(ts.bfv_vector(ctx, centered(offset)))
    decrypted = _every_slot(requester_keys, total.serialize())
    assert decrypted[n : 2 * n].tolist() == offset.tolist()  # the copies
    estimates = _sums_from_copies(decrypted, n)
    assert all(abs(e - s) <= s / THRESHOLD + 1 for e, s in zip(estimates, SUMS, strict=True)), estimates
