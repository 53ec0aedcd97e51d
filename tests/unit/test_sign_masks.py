"""Masks for a sign-only criterion in the overall view (crypto.masks.derive_sign_masks): the sign
is exact for d in {0, -1}, nothing wraps, and a pass and a fail look like the sum they imitate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.he import PLAIN_MODULUS, centered
from crypto.masks import MASK_KEY_BYTES, derive_masks, derive_sign_masks, mask_bound

KEY = bytes(range(MASK_KEY_BYTES))
PSEUDONYMS = [f"{i:026x}" for i in range(4000)]


@settings(max_examples=60, deadline=None)
@given(
    span=st.integers(1, 2**24),
    reach_share=st.floats(0, 1),
    epoch=st.integers(0, 10**6),
)
def test_the_sign_is_exact_and_nothing_wraps(span, reach_share, epoch):
    reach = int(span * reach_share)
    r, s = derive_sign_masks(KEY, "ge:1:household.alive_resident=0", epoch, PSEUDONYMS[:300], span, reach)
    assert (r >= 1).all() and (s >= 0).all() and (s < r).all()
    for d in (0, -1):
        v = r.astype(object) * d + s.astype(object)
        # what the requester decrypts: v mod t, centred; it must be v itself, with v's sign
        decrypted = centered([int(x) % PLAIN_MODULUS for x in v])
        assert decrypted == list(v)
        assert all((x >= 0) == (d >= 0) for x in decrypted)
    # a pass shows at most what the imitated sum shows at its largest passing difference
    assert (s < mask_bound(span) * (reach + 1)).all()


def test_a_pass_and_a_fail_are_drawn_like_the_sums():
    """A pass: r_b * U + s_b, U uniform on 0..reach; a fail: r_g - s_g, the sum one unit past."""
    span, reach = 2203, 1100
    r, s = derive_sign_masks(KEY, "q", 1, PSEUDONYMS, span, reach)
    sum_r, sum_s = derive_masks(KEY, "q-sum", 1, PSEUDONYMS, span)
    u = np.random.default_rng(3).integers(0, reach + 1, len(PSEUDONYMS))
    passing_like_sum = sum_r * u + sum_s
    failing_like_sum = sum_r - sum_s  # d = -1: |v| = r - s'
    bins = np.arange(0, 60, 2)
    for mine, theirs in ((s, passing_like_sum), (r - s, failing_like_sum)):
        a = np.histogram(np.log2(mine.astype(np.float64) + 1), bins)[0] / len(mine)
        b = np.histogram(np.log2(theirs.astype(np.float64) + 1), bins)[0] / len(theirs)
        # total variation between the two at 2-bit resolution; 4,000 samples: sampling alone ~0.05
        assert 0.5 * np.abs(a - b).sum() < 0.1


def test_keyed_to_the_question_and_repeatable():
    one = derive_sign_masks(KEY, "q", 1, PSEUDONYMS[:50], 2203, 1100)
    again = derive_sign_masks(KEY, "q", 1, PSEUDONYMS[:50], 2203, 1100)
    other = derive_sign_masks(KEY, "q", 2, PSEUDONYMS[:50], 2203, 1100)
    assert all((x == y).all() for x, y in zip(one, again, strict=True))
    assert not (one[1] == other[1]).all()


def test_a_reach_outside_the_span_is_refused():
    with pytest.raises(ValueError, match="passing reach"):
        derive_sign_masks(KEY, "q", 1, PSEUDONYMS[:5], 100, 101)
    with pytest.raises(ValueError, match="mask key"):
        derive_sign_masks(b"short", "q", 1, PSEUDONYMS[:5], 100, 50)
