"""The sign-only comparison decides exactly, including at and around the threshold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.he import MAX_ABS_DIFFERENCE, PLAIN_MODULUS, SLOTS, PublicContext, RequesterKeys, chunk_count, chunks
from crypto.masks import MASK_KEY_BYTES, MIN_MASK_LOG2, derive_masks, epoch_of, mask_bound
from xgate.errors import CryptoError, PayloadTooLarge

KEY = bytes(range(MASK_KEY_BYTES))


def _pseudonyms(n: int) -> list[str]:
    return [f"{i:026d}".replace("0", "a").replace("1", "b")[:26] for i in range(n)]


def _masked_signs(keys: RequesterKeys, ctx: PublicContext, terms, direction: int, bound: int, epoch: int = 1):
    count = len(terms[0])
    cts = [ctx.load(ctx.encrypt(list(t)), count) for t in terms]
    r, s = derive_masks(KEY, "le:0:prog.crit=0", epoch, _pseudonyms(count))
    blob = ctx.mask_criterion(cts, direction, bound, r, s)
    return keys.decrypt_signs(blob, count)


def test_boundaries_decide_exactly(requester_keys, public_context):
    """S = T, T-1, T+1 for thresholds across the whole admissible range, both directions."""
    thresholds = [0, 1, 2, 1100, 99_999, 1_000_000, 2**24 - 1]
    sums = [t + delta for t in thresholds for delta in (-1, 0, 1) if t + delta >= 0]
    bounds = [t for t in thresholds for delta in (-1, 0, 1) if t + delta >= 0]
    # Split each sum across two terms to exercise homomorphic addition too.
    a = [s // 2 for s in sums]
    b = [s - s // 2 for s in sums]
    for direction in (-1, 1):
        for bound in set(bounds):
            got = _masked_signs(requester_keys, public_context, [a, b], direction, bound)
            want = [(s >= bound) if direction > 0 else (s <= bound) for s in sums]
            assert list(got) == want, (direction, bound)


@settings(max_examples=15, deadline=None)
@given(
    values=st.lists(
        st.tuples(st.integers(0, 2_000_000), st.integers(0, 200_000), st.integers(0, 100_000)),
        min_size=1,
        max_size=64,
    ),
    bound=st.integers(0, 2_300_000),
    direction=st.sampled_from([-1, 1]),
    epoch=st.integers(0, 10_000),
)
def test_random_sums_decide_like_plaintext(requester_keys, public_context, values, bound, direction, epoch):
    terms = [[v[i] for v in values] for i in range(3)]
    got = _masked_signs(requester_keys, public_context, terms, direction, bound, epoch)
    totals = [sum(v) for v in values]
    assert list(got) == [(t >= bound) if direction > 0 else (t <= bound) for t in totals]


@settings(max_examples=400)
@given(
    span=st.integers(1, MAX_ABS_DIFFERENCE),
    fraction=st.fractions(-1, 1),
    pseudonym=st.text("abcdefgh234567", min_size=26, max_size=26),
)
def test_masked_value_sign_equals_difference_sign_and_fits_plaintext_space(span, fraction, pseudonym):
    d = int(fraction * span)
    r, s = derive_masks(KEY, "le:0:p.c=0", 3, [pseudonym], span)
    v = int(r[0]) * d + int(s[0])
    assert (v >= 0) == (d >= 0)
    assert abs(v) < PLAIN_MODULUS // 2  # never wraps, whatever the criterion's span


@pytest.mark.parametrize("span", [1, 708, 2_298_900, MAX_ABS_DIFFERENCE])
def test_worst_case_masked_values_do_not_wrap(span):
    r = mask_bound(span) - 1
    assert r * span + (r - 1) < PLAIN_MODULUS // 2
    assert -r * span >= -(PLAIN_MODULUS // 2)


def test_masks_are_deterministic_per_epoch_and_fresh_across_epochs():
    ps = _pseudonyms(500)
    r1, s1 = derive_masks(KEY, "le:1100:tax.monthly_income=0", 7, ps, 2_000_000)
    r2, s2 = derive_masks(KEY, "le:1100:tax.monthly_income=0", 7, ps, 2_000_000)
    r3, _ = derive_masks(KEY, "le:1100:tax.monthly_income=0", 8, ps, 2_000_000)
    r4, _ = derive_masks(KEY, "le:1200:tax.monthly_income=0", 7, ps, 2_000_000)
    assert np.array_equal(r1, r2) and np.array_equal(s1, s2)
    assert (r1 != r3).mean() > 0.9 and (r1 != r4).mean() > 0.9
    assert r1.min() >= 2**MIN_MASK_LOG2 and r1.max() < mask_bound(2_000_000)
    assert (s1 >= 0).all() and (s1 < r1).all()


def test_mask_multiplier_keeps_away_from_its_lower_bound_and_spreads_over_the_top():
    span = 2_298_900
    r, _ = derive_masks(KEY, "le:1100:x.y=0", 1, _pseudonyms(20_000), span)
    bits = np.log2(r)
    lo, hi = MIN_MASK_LOG2, np.log2(mask_bound(span))
    # P(exact reveal at the threshold) = E[r_min / r]: the bottom of the range carries almost nothing
    assert np.mean(2.0**MIN_MASK_LOG2 / r) < 1e-6
    assert np.mean(bits < lo + 0.3 * (hi - lo)) < 1e-3
    # ... while the top 30 % of the range (~9.5 bits) is flat: every bit length there is drawn evenly
    top = np.floor(bits[bits >= lo + 0.7 * (hi - lo)]).astype(int)
    counts = np.bincount(top - top.min())[1:-1]
    assert len(counts) >= 7 and counts.min() > 0.7 * counts.max()


def test_epoch_of():
    assert epoch_of(0, 86400) == 0
    assert epoch_of(86400 * 30 - 1, 86400 * 30) == 0
    assert epoch_of(86400 * 30, 86400 * 30) == 1
    with pytest.raises(ValueError):
        epoch_of(1, 0)


def test_chunking():
    assert chunk_count(1) == 1 and chunk_count(SLOTS) == 1 and chunk_count(SLOTS + 1) == 2
    assert [len(c) for c in chunks(list(range(SLOTS + 5)))] == [SLOTS, 5]


def test_public_context_refuses_secret_key_and_garbage(requester_keys):
    secret = requester_keys._ctx.serialize(save_secret_key=True)
    with pytest.raises(CryptoError, match="secret key"):
        PublicContext(secret)
    with pytest.raises(CryptoError, match="malformed"):
        PublicContext(b"not a context" * 10)
    with pytest.raises(PayloadTooLarge):
        PublicContext(b"x" * (3 * 1024 * 1024))


def test_public_context_refuses_evaluation_keys_the_protocol_does_not_use(requester_keys):
    import tenseal as ts

    ctx = ts.context_from(requester_keys._ctx.serialize(save_secret_key=True))
    ctx.generate_relin_keys()
    with_relin = ctx.copy()
    with_relin.make_context_public()
    with pytest.raises(CryptoError, match="relinearisation keys"):
        PublicContext(with_relin.serialize(save_relin_keys=True, save_galois_keys=False))


def test_public_context_refuses_foreign_parameters():
    import tenseal as ts

    other = ts.context(
        ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193, coeff_mod_bit_sizes=[60, 60, 60, 38]
    )
    other.make_context_public()
    with pytest.raises(CryptoError, match="federation parameters"):
        PublicContext(other.serialize())


def test_ciphertext_validation(public_context, requester_keys):
    blob = public_context.encrypt([1, 2, 3])
    with pytest.raises(CryptoError, match="slots"):
        public_context.load(blob, 4)
    with pytest.raises(CryptoError):
        public_context.load(blob[:-20], 3)
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(CryptoError):
        public_context.load(bytes(flipped), 3)
    foreign = PublicContext(RequesterKeys.generate().public_context).encrypt([1, 2, 3])
    # Same parameters but another key: loads (it cannot be told apart), decrypts to noise, and the
    # requester's result is garbage rather than another person's data; the gateway also pins the
    # context fingerprint per request (see gateway tests).
    public_context.load(foreign, 3)


def test_mask_criterion_rejects_mismatched_inputs(public_context):
    ct = public_context.load(public_context.encrypt([1, 2]), 2)
    r = np.array([1, 1])
    with pytest.raises(CryptoError):
        public_context.mask_criterion([], -1, 0, r, r)
    with pytest.raises(CryptoError):
        public_context.mask_criterion([ct], 0, 0, r, r)
    with pytest.raises(CryptoError):
        public_context.mask_criterion([ct], -1, 0, np.array([1]), np.array([0]))


def test_key_file_round_trip(tmp_path, requester_keys, public_context):
    path = tmp_path / "keys" / "requester.key"
    requester_keys.save(path)
    assert path.stat().st_mode & 0o077 == 0
    again = RequesterKeys.load(path)
    blob = public_context.mask_criterion(
        [public_context.load(public_context.encrypt([5, 50]), 2)], -1, 10, np.array([3, 3]), np.array([0, 0])
    )
    assert list(again.decrypt_signs(blob, 2)) == [True, False]
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"junk")
    with pytest.raises(CryptoError):
        RequesterKeys.load(bad)
