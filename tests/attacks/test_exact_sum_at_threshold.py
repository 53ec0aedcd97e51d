"""Attack (issue 13, item 4): read the exact sum off a masked value at the threshold.

With s' < r, a masked value v in [0, r_min) can only come from d = 0 (S = T) and one in
[-r_min, 0) only from d = -1 (S = T + 1), so when r is often small the requester learns exact
sums: the old log-uniform r from 1 pinned ~2 % of subjects at the threshold. The masks now put
almost no mass near the bottom of r's range. The attack: for every masked value, list the
differences consistent with it under the published mask range and count those left with one
(exact) or spanning at most 10 CNY (near-exact).
"""

from __future__ import annotations

import numpy as np

from bench.privacy import _consistent_width, _old_masks
from crypto.masks import derive_masks, mask_bound

SPAN = 2_298_900  # 低保 income criterion: |1,100 - (income + pension + benefits)| over the catalogue ranges
KEY = b"\x09" * 32


def _attack(v: np.ndarray, r_min: int, r_max: int) -> tuple[int, int]:
    width = _consistent_width(v, r_min, r_max)
    return int((width == 0).sum()), int((width <= 10).sum())


def test_masked_values_at_the_threshold_pin_no_sum():
    n = 200_000
    d = np.random.default_rng(3).integers(-2, 3, n)
    r, s = derive_masks(KEY, "le:1100:x", 4, [f"{i:026x}" for i in range(n)], SPAN)
    exact, near = _attack(r * d + s, 1, mask_bound(SPAN) - 1)
    assert exact == 0
    assert near <= n // 10_000  # under 100 per million (the previous masks: ~113,000 per million)


def test_the_previous_masks_fall_to_the_same_attack():
    """Positive control: the attack works against log-uniform r from 1 (the design it replaced)."""
    n = 200_000
    rng = np.random.default_rng(3)
    d = rng.integers(-2, 3, n)
    r, s = _old_masks(n, rng)
    exact, near = _attack(r * d + s, 1, 2**32 - 1)
    assert exact > 0.01 * n and near > 0.05 * n


def test_end_to_end_values_at_the_threshold_keep_the_sum_hidden(requester_keys, public_context):
    n = 300
    sums = np.array([1099, 1100, 1101] * 100)
    income, pension = sums // 2, sums - sums // 2
    terms = [public_context.load(public_context.encrypt(t.tolist()), n) for t in (income, pension)]
    r, s = derive_masks(KEY, "le:1100:x", 4, [f"{i:026x}" for i in range(n)], SPAN)
    v = requester_keys.decrypt_masked(public_context.mask_criterion(terms, -1, 1100, r, s), n)
    assert list(v >= 0) == list(sums <= 1100)
    assert _attack(v, 1, mask_bound(SPAN) - 1) == (0, 0)
