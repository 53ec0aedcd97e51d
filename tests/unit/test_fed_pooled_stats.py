"""Pooled standardisation statistics (federated/pooled_stats.py): the weighted mean of the nodes'
moment vectors gives the mean and sd that one table of all their rows gives (model.fit_stats),
whatever the split, the missing values and the declared range; what a coordinator sends is checked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from federated import model, pooled_stats, updates
from federated.datasets import ElementInfo
from federated.jobs import Encoding, Method
from xgate.errors import InvalidInput

AGE = ElementInfo("civil.age", "int", 0, 130)
INCOME = ElementInfo("tax.income", "int", 0, 2_000_000)
REGION = ElementInfo("civil.region", "category", 0, 3)
INFOS = [AGE, REGION, INCOME]
ENCS = [Encoding(method=Method.STANDARDISE), Encoding(method=Method.ONEHOT), Encoding(method=Method.STANDARDISE)]


def _table(rng: np.random.Generator, n: int, missing: float) -> np.ndarray:
    raw = np.column_stack(
        [rng.integers(18, 90, n), rng.integers(0, 4, n), np.round(rng.lognormal(10, 1, n)).clip(0, 2_000_000)]
    ).astype(np.float64)
    raw[rng.random(raw.shape) < missing] = np.nan
    return raw


def _pool(parts: list[np.ndarray]) -> np.ndarray:
    vectors = [([pooled_stats.moments(INFOS, ENCS, p)], len(p)) for p in parts]
    return updates.weighted_mean(vectors)[0]  # what FedAvg (and SecAgg+, unmasked) returns


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=5),
    missing=st.sampled_from([0.0, 0.1, 0.6]),
    seed=st.integers(0, 2**32 - 1),
)
@example(sizes=[7, 5], missing=0.6, seed=6863)  # one income left: a constant column (found in a suite run)
def test_pooled_statistics_equal_one_tables_statistics(sizes: list[int], missing: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [_table(rng, n, missing) for n in sizes]
    whole = model.fit_stats(INFOS, ENCS, np.vstack(parts))
    pooled = pooled_stats.pooled_stats(INFOS, ENCS, _pool(parts))
    assert pooled.keys() == whole.keys() == {"civil.age", "tax.income"}
    for feature, (mean, sd) in whole.items():
        assert pooled[feature][0] == pytest.approx(mean, rel=1e-9, abs=1e-6)
        assert pooled[feature][1] == pytest.approx(sd, rel=1e-6, abs=1e-6)


def test_each_moment_is_within_secaggs_clipping_range() -> None:
    vector = pooled_stats.moments(INFOS, ENCS, _table(np.random.default_rng(1), 500, 0.2))
    assert vector.shape == (2 * pooled_stats.MOMENTS,)
    assert np.all((vector >= 0) & (vector <= pooled_stats.STATS_CLIPPING_RANGE))


def test_quantised_like_secagg_the_income_spread_stays_within_a_thousandth() -> None:
    """SecAgg+ multiplies a node's vector by its weight ratio, then quantises to the statistics round's
    levels: with a node at 0.1 % of max_weight and a skewed income (sd ~3 % of the declared range),
    the pooled sd still comes out within 0.1 % (the training rounds' 2^22 levels missed by 6.5 %)."""
    rng = np.random.default_rng(7)
    parts = [_table(rng, 1000, 0.0) for _ in range(3)]
    exact = pooled_stats.pooled_stats(INFOS, ENCS, _pool(parts))
    max_weight, levels, clip = 1_000_000, pooled_stats.STATS_QUANTIZATION_RANGE, pooled_stats.STATS_CLIPPING_RANGE
    total, ratios = np.zeros(2 * pooled_stats.MOMENTS), 0.0
    for part in parts:
        ratio = len(part) / max_weight
        q = np.floor((pooled_stats.moments(INFOS, ENCS, part) * ratio + clip) * levels / (2 * clip) + rng.random(6))
        total += q * 2 * clip / levels - clip
        ratios += ratio
    quantised = pooled_stats.pooled_stats(INFOS, ENCS, total / ratios)
    assert quantised["tax.income"][1] == pytest.approx(exact["tax.income"][1], rel=1e-3)
    assert quantised["civil.age"][1] == pytest.approx(exact["civil.age"][1], rel=1e-3)


def test_a_feature_nobody_holds_standardises_as_fit_stats_does() -> None:
    raw = _table(np.random.default_rng(2), 50, 0.0)
    raw[:, 0] = np.nan
    assert pooled_stats.pooled_stats(INFOS, ENCS, _pool([raw]))["civil.age"] == model.fit_stats(INFOS, ENCS, raw)[
        "civil.age"
    ] == (0.0, 1.0)  # fmt: skip


def test_noisy_moments_carry_the_stated_noise_and_stay_within_range() -> None:
    """Record-level DP: each sum gets N(0, (z sqrt(3F))^2), i.e. z sqrt(3F) / n on each mean (measured)."""
    m = pooled_stats.moments(INFOS, ENCS, _table(np.random.default_rng(4), 800, 0.1))
    rng = np.random.default_rng(5)
    draws = np.array([pooled_stats.noisy_moments(m, 800, 800.0, 20.0, rng) for _ in range(4000)])
    assert np.all((draws >= 0) & (draws <= 1))  # post-processed into the range SecAgg+ takes
    age_mean_u = draws[:, 1]  # about 0.4: six noise sds from the clipping at 0 and 1
    assert age_mean_u.std() == pytest.approx(20.0 * np.sqrt(6) / 800, rel=0.05)
    assert age_mean_u.mean() == pytest.approx(m[1], abs=4 * 20.0 * np.sqrt(6) / 800 / np.sqrt(4000))
    with pytest.raises(ValueError, match="3 entries"):
        pooled_stats.noisy_moments(m[:5], 800, 800.0, 20.0, rng)


def test_noisy_moments_divide_by_the_released_count_not_the_exact_one() -> None:
    """The node's sums over n rows are divided by its released (noisy) row count: a mean it sends
    must not be a sum over the exact n, which, with the sum, would give n away."""
    m = pooled_stats.moments(INFOS, ENCS, _table(np.random.default_rng(4), 800, 0.1))
    rng = np.random.default_rng(6)
    halved = pooled_stats.noisy_moments(m, 800, 1600.0, 0.0, rng)  # no noise: only the divisor shows
    assert halved == pytest.approx(np.clip(m / 2, 0.0, 1.0))
    with pytest.raises(ValueError, match="needs rows"):
        pooled_stats.noisy_moments(m, 800, 0.0, 20.0, rng)


def test_noisy_statistics_keep_the_mean_in_range_and_the_spread_above_the_floor() -> None:
    """Noise can make a variance zero or negative, or a share tiny: the statistics stay usable."""
    collapsed = np.array([0.5, 0.3, 0.05, 1e-6, 0.5, 0.0])  # age: E[u^2] < E[u]^2; income: share ~0, mean > share
    stats = pooled_stats.pooled_stats(INFOS, ENCS, collapsed, noise_sd=1e-9)  # a tiny noise: the fixed floor
    assert stats["civil.age"][1] == pytest.approx(pooled_stats.NOISY_SD_FLOOR * 130)
    assert 0 <= stats["tax.income"][0] <= 2_000_000
    assert stats["tax.income"][1] >= pooled_stats.NOISY_SD_FLOOR * 2_000_000
    # Small nodes, large noise: the spread is at least what the noise on the variance could fake.
    noise = pooled_stats.pooled_noise_sd(2, [540, 810], 20.0)
    assert noise == pytest.approx(20.0 * np.sqrt(6) * np.sqrt(2) / 1350)
    wide = pooled_stats.pooled_stats(INFOS, ENCS, collapsed, noise_sd=noise)
    assert wide["civil.age"][1] == pytest.approx(np.sqrt(2 * noise) * 130)
    assert pooled_stats.pooled_noise_sd(0, [540], 20.0) == 0.0 == pooled_stats.pooled_noise_sd(2, [], 20.0)


@pytest.mark.parametrize(
    ("pooled", "message"),
    [(np.zeros(5), "6 finite numbers"), (np.array([0.5, np.nan, 0.1, 0.5, 0.2, 0.1]), "finite")],
)
def test_malformed_aggregates_are_refused(pooled: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        pooled_stats.pooled_stats(INFOS, ENCS, pooled)


def test_config_round_trip_and_what_a_node_refuses() -> None:
    stats = {"civil.age": (44.5, 12.25), "tax.income": (30_000.0, 9_000.0)}
    assert pooled_stats.stats_from_config(pooled_stats.stats_to_config(stats), INFOS, ENCS) == stats
    refused = {
        "not json": "not a JSON object",
        '{"civil.age": [40, 10]}': "no standardisation statistics for 'tax.income'",
        '{"civil.age": [40, 0], "tax.income": [1, 1]}': "sd > 0",
        '{"civil.age": [40, "x"], "tax.income": [1, 1]}': "not a JSON object",
    }
    for text, message in refused.items():
        with pytest.raises(InvalidInput, match=message):
            pooled_stats.stats_from_config(text, INFOS, ENCS)
    assert pooled_stats.infos_from_config(pooled_stats.infos_to_config(INFOS)) == INFOS
    with pytest.raises(InvalidInput, match="feature-infos"):
        pooled_stats.infos_from_config('[["a", "int", 0]]')


def test_a_node_accepts_only_statistics_an_honest_pooling_gives() -> None:
    """stats_from_config (finding: crafted statistics). The mean must lie within the declared range,
    the sd be at least 1 % of it under record-level DP (what `pooled_stats` gives with noise), at
    least 1e-12 without; refusals name the feature and its declared metadata only."""
    infos, encs = [AGE, INCOME], [ENCS[0], ENCS[2]]
    honest = pooled_stats.pooled_stats(infos, encs, np.array([0.0, 0.0, 0.0, 1.0, 0.4, 0.16]), noise_sd=1e-9)
    # no value at all (noise pushed the share to 0) on the wide range, and a constant column
    assert honest["civil.age"] == (0.0, 1.3) and honest["tax.income"][1] == pytest.approx(20_000.0)
    for record_dp in (False, True):
        assert pooled_stats.stats_from_config(pooled_stats.stats_to_config(honest), infos, encs, record_dp=record_dp)
    exact = pooled_stats.pooled_stats(infos, encs, np.array([1.0, 0.3, 0.0901, 1.0, 0.02, 0.00041]))
    assert pooled_stats.stats_from_config(pooled_stats.stats_to_config(exact), infos, encs)  # without DP: small sd
    crafted = [
        ({"civil.age": (40.0, 10.0), "tax.income": (0.0, 5e-303)}, False, "sd for 'tax.income' is below 1e-12"),
        ({"civil.age": (40.0, 10.0), "tax.income": (0.0, 5e-303)}, True, "sd for 'tax.income' is below 20000"),
        ({"civil.age": (40.0, 1.2), "tax.income": (1e5, 3e4)}, True, "sd for 'civil.age' is below 1.3"),
        (
            {"civil.age": (131.0, 10.0), "tax.income": (1e5, 3e4)},
            False,
            "'civil.age' lies outside its declared range 0..130",
        ),
        ({"civil.age": (40.0, 10.0), "tax.income": (-1e308, 3e4)}, True, "'tax.income' lies outside"),
    ]
    for stats, record_dp, why in crafted:
        with pytest.raises(InvalidInput, match=why):
            pooled_stats.stats_from_config(pooled_stats.stats_to_config(stats), infos, encs, record_dp=record_dp)
    assert pooled_stats.STANDARDISED_BOUND == 1 / pooled_stats.NOISY_SD_FLOOR  # |x - mean| / sd within it
