"""exchange/cohort.py: the cohort view's randomized response (exact flips, eps, debiasing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.he import PLAIN_MODULUS
from crypto.masks import derive_masks
from exchange.cohort import (
    attack_bound,
    debias,
    epsilon_per_query,
    flip_masks,
    flip_probability,
    noisy_count_pmf,
)

KEY = b"\x07" * 32


@settings(max_examples=60, deadline=None)
@given(
    threshold=st.integers(0, 2**24 - 1),
    direction=st.sampled_from([-1, 1]),
    offsets=st.lists(st.integers(-3, 3), min_size=1, max_size=12),
    epoch=st.integers(0, 2**40),
)
def test_a_flipped_slot_decrypts_to_the_exact_opposite_verdict_at_every_boundary(
    threshold: int, direction: int, offsets: list[int], epoch: int
) -> None:
    """v' = -v - 1: the sign flips exactly for S = T and T +- 1 (and a bit further), no wrap mod t."""
    sums = np.array([max(0, threshold + o) for o in offsets], dtype=np.int64)
    span = 2**24
    names = [f"p{i:025d}" for i in range(len(sums))]
    r, s = derive_masks(KEY, "q", epoch, names, span)
    flips = np.arange(len(sums)) % 2 == 1
    weight, offset = flip_masks(direction, threshold, r, s, flips)
    for i, total in enumerate(sums.tolist()):
        v = int(weight[i]) * total + int(offset[i])
        assert abs(v) < PLAIN_MODULUS // 2
        passes = total >= threshold if direction > 0 else total <= threshold
        assert (v >= 0) == (passes != bool(flips[i]))
        plain = direction * int(r[i]) * (total - threshold) + int(s[i])
        assert v == (-plain - 1 if flips[i] else plain)  # magnitude moves by one, no more


def test_flip_probability_gives_epsilon_and_refuses_nonsense() -> None:
    for eps in (0.1, 1.0, 3.0):
        p = flip_probability(eps)
        assert math.log((1 - p) / p) == pytest.approx(eps)
        assert attack_bound(eps) == pytest.approx(1 - p)
    assert epsilon_per_query(1.0, 3) == 3.0
    for bad in (0.0, -1.0, float("inf"), float("nan"), 21.0):
        with pytest.raises(ValueError, match="epsilon"):
            flip_probability(bad)


def test_the_estimate_is_unbiased_and_its_interval_covers() -> None:
    n, p = 200, flip_probability(1.0)
    for true_count in (0, 37, 100, 200):
        pmf = noisy_count_pmf(true_count, n, p)
        assert pmf.sum() == pytest.approx(1.0)
        estimates = np.array([debias(k, n, p).estimate for k in range(n + 1)])
        assert float(pmf @ estimates) == pytest.approx(true_count, abs=1e-6)
        variance = float(pmf @ (estimates - true_count) ** 2)
        assert math.sqrt(variance) == pytest.approx(debias(0, n, p).standard_error, rel=1e-6)
        covered = sum(pmf[k] for k in range(n + 1) if _inside(debias(k, n, p).interval(0.95), true_count))
        assert covered >= 0.93


def _inside(interval: tuple[float, float], x: int) -> bool:
    return interval[0] <= x <= interval[1]


def test_debias_refuses_impossible_inputs() -> None:
    with pytest.raises(ValueError, match="noisy count"):
        debias(11, 10, 0.2)
    with pytest.raises(ValueError, match="flip probability"):
        debias(3, 10, 0.5)
    with pytest.raises(ValueError, match="level"):
        debias(3, 10, 0.2).interval(1.0)


def test_flip_masks_refuses_mismatched_inputs() -> None:
    r = np.array([5, 6], dtype=np.int64)
    with pytest.raises(ValueError, match="direction"):
        flip_masks(0, 1, r, r, np.array([True, False]))
    with pytest.raises(ValueError, match="slots"):
        flip_masks(1, 1, r, r, np.array([True]))
