"""Standardisation statistics pooled over horizontal nodes by (secure) aggregation (pure).

`standardise` encodes (x - mean) / sd with the mean and sd of the feature over every node's
training rows. No node reveals its own: each sends, per standardised feature, three numbers
within [0, 1] (its moment vector) and the aggregate alone is opened:

    share of its rows where the value is present,  mean of u,  mean of u^2,
    u = (x - declared min) / (declared max - declared min), and 0 where the value is missing,

weighted by its training rows. The aggregate (SecAgg+'s unmasked weighted mean, or FedAvg's) is
then the pooled Σpresent/N, Σu/N, Σu²/N, from which `pooled_stats` gives the mean and sd over
the rows where the value is present, exactly as `model.fit_stats` computes them on one table.
Scaling by the declared range keeps every entry within SecAgg+'s clipping range of 1.

With record-level DP (`dp.unit = "record"`) each node's moment vector is a Gaussian mechanism
(`noisy_moments`): one person's record moves each of the 3 sums per feature by at most 1 (its
present flag, u and u^2 all lie in [0, 1]), so the sums have L2 sensitivity sqrt(3F) for F
standardised features, under replacement and under addition or removal alike; the node adds
N(0, (z sqrt(3F))^2) to each sum, z = `dp_sgd.STATS_NOISE_MULTIPLIER`, before it divides by its row
count (which it reveals anyway as its aggregation weight). Its accountant composes this release
with its DP-SGD steps (`dp_sgd.plan(standardises=True)`), so the ledger's epsilon covers both. The
pooled statistics are post-processing; `pooled_stats` keeps them usable when noise pushes a share
or a variance to zero or below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from federated.datasets import ElementInfo
from federated.jobs import Encoding, Method
from federated.model import Stats
from xgate.errors import InvalidInput

MOMENTS = 3  # present share, mean of u, mean of u^2
# Flower config keys: the statistics round's train message says `phase = "statistics"`; every
# later train and evaluate message carries the pooled statistics.
PHASE_KEY = "phase"
STATISTICS_PHASE = "statistics"
CONFIG_KEY = "standardise-stats"
# SecAgg+ for the statistics round: values clipped to [-1, 1], quantised to 2^30 levels (Flower's
# stochastic rounding casts to int32, so 2^30 is the most it takes), summed modulo 2^40 (room for
# 2^10 nodes). 2^30 levels keep the pooled variance exact to about 1e-6 of the range squared
# even for a node holding 0.1 % of max_weight rows; 2^22 (the model updates' quantisation) did not.
STATS_CLIPPING_RANGE = 1.0
STATS_QUANTIZATION_RANGE = 2**30
STATS_MODULUS_RANGE = 2**40


def standardised(infos: Sequence[ElementInfo], encs: Sequence[Encoding]) -> list[ElementInfo]:
    return [info for info, enc in zip(infos, encs, strict=True) if enc.method is Method.STANDARDISE]


def _unit(info: ElementInfo, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    present = ~np.isnan(col)
    span = max(float(info.max - info.min), 1e-12)
    u = np.clip((np.where(present, col, info.min) - info.min) / span, 0.0, 1.0)
    return np.where(present, u, 0.0), present


def moments(infos: Sequence[ElementInfo], encs: Sequence[Encoding], raw: np.ndarray) -> np.ndarray:
    """This node's moment vector over its training rows (raw: rows x features, NaN = missing)."""
    out: list[float] = []
    n = max(raw.shape[0], 1)
    for j, (info, enc) in enumerate(zip(infos, encs, strict=True)):
        if enc.method is Method.STANDARDISE:
            u, present = _unit(info, raw[:, j])
            out += [float(present.sum()) / n, float(u.sum()) / n, float((u * u).sum()) / n]
    return np.asarray(out, dtype=np.float64)


def noisy_moments(
    moment_vector: np.ndarray, n: int, rows: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """`moments` (means over n rows) for record-level DP: the sums get N(0, (z sqrt(3F))^2) each and
    are divided by the node's released row count `rows` (dp_sgd.noisy_rows), never by n itself."""
    m = np.asarray(moment_vector, dtype=np.float64)
    # n = 0 is a node without training rows: its sums are zero and it sends noise alone, in the same
    # form as any node (a refusal would tell the coordinator that the node's only record is absent).
    if n < 0 or not rows > 0 or m.size % MOMENTS:
        raise ValueError("a moment vector needs rows (a released count) and 3 entries per standardised feature")
    sensitivity = math.sqrt(m.size)  # sqrt(3F): each sum moves by at most 1 per record
    noisy = (m * n + rng.normal(0.0, noise_multiplier * sensitivity, size=m.shape)) / rows
    return np.clip(noisy, 0.0, 1.0)  # post-processing: every entry is a share or a mean in [0, 1]


# With noisy moments a small spread can come out as zero or below, or far too small: the sd is then
# at least this share of the declared range, and at least what the noise on the pooled variance
# could fake (`pooled_noise_sd`), so no standardised value is blown up by a variance noise produced.
NOISY_SD_FLOOR = 0.01
_NOISE_SDS = 2.0  # a spread the noise reaches within this many standard deviations is not trusted


_CANCELLATION = 1e-13


def pooled_noise_sd(standardised_features: int, weights: Sequence[float], noise_multiplier: float) -> float:
    """Standard deviation of the noise on each pooled mean entry, from public facts only: every
    node adds N(0, (z sqrt(3F))^2) to sums over n_i >= w_i rows, pooled with weights w_i, so the
    noise is at most z sqrt(3F) sqrt(k) / sum(w_i) (an upper bound when a weight is capped)."""
    total = float(sum(weights))
    if standardised_features <= 0 or total <= 0:
        return 0.0
    return noise_multiplier * math.sqrt(MOMENTS * standardised_features) * math.sqrt(len(weights)) / total


def pooled_stats(
    infos: Sequence[ElementInfo], encs: Sequence[Encoding], pooled: np.ndarray, *, noise_sd: float = 0.0
) -> Stats:
    """Mean and sd of each standardised feature from the aggregated moment vectors. `noise_sd` > 0:
    the nodes added DP noise of that size to each pooled entry (`pooled_noise_sd`), so the mean is
    kept within the range and the sd above what that noise could produce."""
    features = standardised(infos, encs)
    values = np.asarray(pooled, dtype=np.float64).ravel()
    if values.shape != (MOMENTS * len(features),) or not np.all(np.isfinite(values)):
        raise InvalidInput(
            f"pooled statistics must be {MOMENTS * len(features)} finite numbers "
            f"({MOMENTS} per standardised feature), got {values.size}"
        )
    stats: Stats = {}
    for k, info in enumerate(features):
        share, mean_u, mean_u2 = values[MOMENTS * k : MOMENTS * (k + 1)]
        span = float(info.max - info.min)
        if share <= 1e-12:  # no node holds a value: (x - min) / 1, as fit_stats does for an empty column
            # (with noise, at least the floor every record-DP node checks: `stats_from_config`)
            stats[info.id] = (float(info.min), max(1.0, NOISY_SD_FLOOR * span) if noise_sd > 0 else 1.0)
            continue
        m = min(max(mean_u / share, 0.0), 1.0)  # exact moments give 0 <= m <= 1 anyway (quantisation aside)
        second = mean_u2 / share
        # E[u^2] - E[u]^2 cancels: a constant column keeps about 1e-16 of E[u^2] (an sd of 1e-4 CNY
        # on a 2,000,000 range, which would blow its standardised values up), so below a thousand
        # times that it is constant, as fit_stats's zero sd is.
        variance = second - m * m
        sd = math.sqrt(variance) * span if variance > _CANCELLATION * second else 0.0
        if noise_sd > 0:
            sd = max(sd, max(NOISY_SD_FLOOR, math.sqrt(_NOISE_SDS * noise_sd)) * span)
        stats[info.id] = (float(info.min) + m * span, sd if sd > 1e-12 else 1.0)
    return stats


def stats_to_config(stats: Stats) -> str:
    """The pooled statistics as a Flower config value (a JSON object: id -> [mean, sd])."""
    return json.dumps({k: [mean, sd] for k, (mean, sd) in sorted(stats.items())}, separators=(",", ":"))


# What a node accepts as a standardised feature's statistics: the mean within the declared range
# and the sd at least what an honest coordinator's `pooled_stats` gives. With record-level DP that
# is NOISY_SD_FLOOR of the declared span, so every standardised value of a declared-range value lies
# within +-1 / NOISY_SD_FLOOR (`STANDARDISED_BOUND`, which the node clips to as well); without DP an
# exact sd can be small, but never below 1e-12 (pooled_stats then sends 1.0).
STANDARDISED_BOUND = 1.0 / NOISY_SD_FLOOR
_MIN_SD = 1e-12
_SLACK = 1e-9  # relative: the JSON round trip is exact, this only absorbs the floor's own rounding


def sd_floor(info: ElementInfo, record_dp: bool) -> float:
    """The least sd a node accepts for this feature (see STANDARDISED_BOUND)."""
    return max(NOISY_SD_FLOOR * float(info.max - info.min), _MIN_SD) if record_dp else _MIN_SD


def stats_from_config(
    text: str, infos: Sequence[ElementInfo], encs: Sequence[Encoding], *, record_dp: bool = False
) -> Stats:
    """Parse and check what the coordinator sent: for every standardised feature a finite mean within
    its declared range and an sd of at least `sd_floor`. Statistics a coordinator crafted to blow one
    row's standardised value up (an sd of 1e-300: infinities that fail the node exactly when that row
    is sampled) are refused before any row is read, naming the feature and its declared metadata
    only, so the refusal is the same whatever the node's data."""
    try:
        raw = json.loads(text)
        stats = {str(k): (float(v[0]), float(v[1])) for k, v in raw.items()}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise InvalidInput("the coordinator's standardisation statistics are not a JSON object of [mean, sd]") from None
    for info in standardised(infos, encs):
        if info.id not in stats:
            raise InvalidInput(f"the coordinator sent no standardisation statistics for '{info.id}'")
        mean, sd = stats[info.id]
        if not (math.isfinite(mean) and math.isfinite(sd) and sd > 0):
            raise InvalidInput(f"the coordinator's statistics for '{info.id}' are not a finite mean and sd > 0")
        span, floor = float(info.max - info.min), sd_floor(info, record_dp)
        if not info.min - _SLACK * span <= mean <= info.max + _SLACK * span:
            raise InvalidInput(
                f"the coordinator's standardisation mean for '{info.id}' lies outside its declared range"
                f" {info.min}..{info.max}: no pooling of this feature's values gives it"
            )
        if sd < floor * (1 - _SLACK):
            dp_note = " (record-level DP: 1 % of its declared range)" if record_dp else ""
            raise InvalidInput(
                f"the coordinator's standardisation sd for '{info.id}' is below {floor:g}{dp_note},"
                " the least the statistics round gives"
            )
    return stats


def infos_to_config(infos: Sequence[ElementInfo]) -> str:
    """Declared types and ranges of the features as a run-config value, for the ServerApp."""
    return json.dumps([[i.id, i.type, i.min, i.max] for i in infos], separators=(",", ":"))


def infos_from_config(text: str) -> list[ElementInfo]:
    try:
        return [ElementInfo(str(i), str(t), int(lo), int(hi)) for i, t, lo, hi in json.loads(text)]
    except (ValueError, TypeError):
        raise InvalidInput("run config 'feature-infos' is not a list of [id, type, min, max]") from None
