"""Masks for a sign-only criterion in the overall view (crypto.masks.derive_sign_masks): the sign
is exact for d in {0, -1}, nothing wraps, and a pass and a fail look like the sum they imitate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.he import PLAIN_MODULUS, centered
from crypto.masks import FAR_FAIL_SHARE, MASK_KEY_BYTES, derive_masks, derive_sign_masks, mask_bound

KEY = bytes(range(MASK_KEY_BYTES))
PSEUDONYMS = [f"{i:026x}" for i in range(40_000)]
SPAN, PASSING, FAILING = 2203, 1100, 2203  # 低保's income sum, clamped


@settings(max_examples=60, deadline=None)
@given(
    span=st.integers(1, 2**24),
    passing_share=st.floats(0, 1),
    failing_share=st.floats(0, 1),
    epoch=st.integers(0, 10**6),
)
def test_the_sign_is_exact_and_nothing_wraps(span, passing_share, failing_share, epoch):
    passing, failing = int(span * passing_share), max(1, int(span * failing_share))
    r, s = derive_sign_masks(KEY, "ge:1:household.alive_resident=0", epoch, PSEUDONYMS[:300], span, passing, failing)
    assert (r >= 1).all() and (s >= 0).all() and (s < r).all()
    for d in (0, -1):
        v = r.astype(object) * d + s.astype(object)
        # what the requester decrypts: v mod t, centred; it must be v itself, with v's sign
        decrypted = centered([int(x) % PLAIN_MODULUS for x in v])
        assert decrypted == list(v)
        assert all((x >= 0) == (d >= 0) for x in decrypted)
    # a pass or a fail shows at most what the imitated sum shows at its reach
    assert (s < mask_bound(span) * (passing + 1)).all()
    assert (r - s <= mask_bound(span) * failing).all()


def _tv(mine: np.ndarray, theirs: np.ndarray) -> float:
    """Total variation between two magnitudes' log2 distributions at half-bit resolution."""
    bins = np.arange(0, 120) / 2
    a = np.histogram(np.log2(mine.astype(np.float64) + 1), bins)[0] / len(mine)
    b = np.histogram(np.log2(theirs.astype(np.float64) + 1), bins)[0] / len(theirs)
    return float(0.5 * np.abs(a - b).sum())


def _sum_like(passing_u: np.ndarray, failing_past: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the sum shows: a pass at difference u, |v| = r*u + s'; a fail `past` units beyond, r*past - s'."""
    r, s = derive_masks(KEY, "q-sum", 1, PSEUDONYMS, SPAN)
    return r * passing_u + s, r * failing_past - s


def test_a_pass_and_a_fail_are_drawn_like_the_sums():
    """40,000 samples at half-bit resolution: sampling alone leaves a total variation near 0.02."""
    r, s = derive_sign_masks(KEY, "q", 1, PSEUDONYMS, SPAN, PASSING, 1)
    rng = np.random.default_rng(3)
    passing_like, failing_like = _sum_like(rng.integers(0, PASSING + 1, len(r)), np.ones(len(r), dtype=np.int64))
    assert _tv(s, passing_like) < 0.03
    assert _tv(r - s, failing_like) < 0.03
    # controls, each a way to get it wrong: a pass spread over half the reach, a fail drawn as a
    # plain sign-only mask (r up to 2^48: the earlier design)
    half, _ = _sum_like(rng.integers(0, PASSING // 2 + 1, len(r)), np.ones(len(r), dtype=np.int64))
    assert _tv(s, half) > 0.05
    plain_r, plain_s = derive_masks(KEY, "q-plain", 1, PSEUDONYMS, 1)
    assert _tv(r - s, plain_r - plain_s) > 0.07


def test_a_share_of_the_fails_lies_far_past_the_line_as_a_sum_of_several_terms_can():
    """A fail is drawn as the sum failing one unit past its line, or, for a share of them, 2 up to
    the failing reach past it (log-uniform): without that, a failing |v| beyond one mask's reach
    could only be the sum's, and named it with certainty."""
    r, s = derive_sign_masks(KEY, "q", 1, PSEUDONYMS, SPAN, PASSING, FAILING)
    rng = np.random.default_rng(5)
    far = rng.random(len(r)) < FAR_FAIL_SHARE
    past = np.where(far, np.clip(np.floor(np.exp2(rng.uniform(1, math.log2(FAILING), len(r)))), 2, FAILING), 1)
    _, failing_like = _sum_like(np.zeros(len(r), dtype=np.int64), past.astype(np.int64))
    assert _tv(r - s, failing_like) < 0.03
    beyond = ((r - s) > mask_bound(SPAN)).mean()
    assert 0.01 < beyond < FAR_FAIL_SHARE  # one mask's reach is passed, by far fails only
    assert ((r - s) <= mask_bound(SPAN) * FAILING).all()


def test_keyed_to_the_question_and_repeatable():
    one = derive_sign_masks(KEY, "q", 1, PSEUDONYMS[:50], SPAN, PASSING, FAILING)
    again = derive_sign_masks(KEY, "q", 1, PSEUDONYMS[:50], SPAN, PASSING, FAILING)
    other = derive_sign_masks(KEY, "q", 2, PSEUDONYMS[:50], SPAN, PASSING, FAILING)
    assert all((x == y).all() for x, y in zip(one, again, strict=True))
    assert not (one[1] == other[1]).all()


def test_a_reach_outside_the_span_is_refused():
    with pytest.raises(ValueError, match="passing reach"):
        derive_sign_masks(KEY, "q", 1, PSEUDONYMS[:5], 100, 101)
    with pytest.raises(ValueError, match="failing reach"):
        derive_sign_masks(KEY, "q", 1, PSEUDONYMS[:5], 100, 50, 0)
    with pytest.raises(ValueError, match="mask key"):
        derive_sign_masks(b"short", "q", 1, PSEUDONYMS[:5], 100, 50)


def _yearly_means(per_epoch: list[np.ndarray]) -> np.ndarray:
    """Per subject, the mean of log2 |v| over a year of results (what an attacker averages)."""
    return np.mean([np.log2(v.astype(np.float64) + 1) for v in per_epoch], axis=0)


def test_a_pass_pretends_the_same_distance_in_every_epoch_as_a_standing_sum_does():
    """Over 12 epochs a sum whose values stand keeps its difference d and only its masks change; a
    sign-only criterion's pretended distance must stand too, or the spread of a subject's results
    over a year tells the two apart (bench/privacy.py `over_epochs`: 38.0 % against 33.3 % chance
    for the failing position, 33.3 % now). The control draws the distance afresh each epoch."""
    subjects, epochs = PSEUDONYMS[:6000], range(1, 13)
    rng = np.random.default_rng(11)
    d = rng.integers(0, PASSING + 1, len(subjects))  # each subject's standing difference
    sums = [r * d + s for r, s in (derive_masks(KEY, "q-sum", e, subjects, SPAN) for e in epochs)]
    standing = [derive_sign_masks(KEY, "q", e, subjects, SPAN, PASSING, 1)[1] for e in epochs]
    fresh = [derive_sign_masks(KEY, f"q-{e}", e, subjects, SPAN, PASSING, 1)[1] for e in epochs]
    sums_mean, standing_mean, fresh_mean = (_yearly_means(x) for x in (sums, standing, fresh))
    assert _tv_of_logs(standing_mean, sums_mean) < 0.06  # sampling alone: about 0.035
    assert abs(standing_mean.std() - sums_mean.std()) < 0.12  # 6 standard errors
    assert sums_mean.std() - fresh_mean.std() > 0.3  # the control: means bunched, 2.24 against 1.80


def _tv_of_logs(a: np.ndarray, b: np.ndarray) -> float:
    bins = np.arange(0, 120) / 2
    return float(0.5 * np.abs(np.histogram(a, bins)[0] / len(a) - np.histogram(b, bins)[0] / len(b)).sum())
