"""Validation and scaling of model updates before/after secure aggregation (pure).

Flower's SecAgg+ quantises every value into [-clipping_range, +clipping_range] and SILENTLY
clips anything outside, after multiplying by the node's weight ratio num_examples/max_weight.
xgate therefore never hands SecAgg+ a raw value it has not checked:

* a node sends its update (delta = local - global), not its weights, so values are small;
* `prepare_update` rejects NaN/inf and wrong shapes, and clips each coordinate to
  `update_bound` (<= clipping_range) itself, counting and logging the clipped coordinates;
* the example weight is capped at `max_weight` (also logged), so the ratio is <= 1 and the
  scaled values stay inside the range SecAgg+ can represent;
* on the server, `check_update` applies the same rules to plain (non-SecAgg) updates and rejects
  offenders with a reason, and `check_aggregate` re-checks the unmasked aggregate.
Quantisation error of SecAgg+ per value is at most clipping_range / quantization_range
(= 2.4e-7 with xgate's defaults), see `quantisation_error_bound`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xgate.errors import InvalidInput

SECAGG_QUANTIZATION_RANGE = 2**22
SECAGG_MODULUS_RANGE = 2**32


@dataclass(frozen=True)
class PreparedUpdate:
    arrays: list[np.ndarray]
    weight: int
    clipped_values: int
    weight_capped: bool


def _check_shapes(arrays: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]) -> None:
    if len(arrays) != len(shapes):
        raise InvalidInput(f"update has {len(arrays)} arrays, expected {len(shapes)}")
    for i, (a, s) in enumerate(zip(arrays, shapes, strict=True)):
        if tuple(a.shape) != tuple(s):
            raise InvalidInput(f"update array {i} has shape {tuple(a.shape)}, expected {tuple(s)}")
        if not np.all(np.isfinite(a)):
            raise InvalidInput(f"update array {i} contains NaN or infinite values")


def prepare_update(
    delta: Sequence[np.ndarray],
    shapes: Sequence[tuple[int, ...]],
    num_examples: int,
    *,
    bound: float,
    max_weight: int,
) -> PreparedUpdate:
    """Node side: validate, clip to [-bound, bound] and cap the weight, before masking."""
    _check_shapes(delta, shapes)
    if num_examples <= 0:
        raise InvalidInput("a node with no training examples cannot contribute an update")
    clipped = sum(int(np.count_nonzero(np.abs(a) > bound)) for a in delta)
    arrays = [np.clip(a, -bound, bound).astype(np.float64) for a in delta]
    weight = min(num_examples, max_weight)
    return PreparedUpdate(arrays, weight, clipped, weight < num_examples)


def check_update(
    arrays: Sequence[np.ndarray],
    shapes: Sequence[tuple[int, ...]],
    num_examples: int,
    *,
    bound: float,
    max_weight: int,
) -> None:
    """Server side (plain aggregation): raise InvalidInput with a reason for a bad update."""
    _check_shapes(arrays, shapes)
    if not 0 < num_examples <= max_weight:
        raise InvalidInput(f"update weight {num_examples} outside 1..{max_weight}")
    worst = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    if worst > bound * (1 + 1e-9):
        raise InvalidInput(f"update value magnitude {worst:.3g} exceeds the bound {bound}")


def check_aggregate(arrays: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]], *, bound: float) -> None:
    """The (weighted mean) aggregate must have the right shape, be finite and within the bound."""
    check_update(arrays, shapes, 1, bound=bound + quantisation_error_bound(bound), max_weight=1)


def weighted_mean(updates: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """Plain FedAvg aggregate, the reference SecAgg+ must match."""
    total = sum(w for _, w in updates)
    return [np.sum([u[i] * w for u, w in updates], axis=0) / total for i in range(len(updates[0][0]))]


def quantisation_error_bound(clipping_range: float, n_nodes: int = 1, total_ratio: float = 1.0) -> float:
    """Upper bound of SecAgg+'s per-value error on the weighted mean (rounding of values and ratios).

    Each value is rounded to a grid of step 2*c/Q (error <= c/Q per node, c = clipping range,
    Q = quantisation range) and each weight ratio to 1/Q; the weighted mean keeps the
    per-node error, plus the relative error of the ratio rounding times the value bound c.
    The server divides the masked sum by the total weight ratio (sum of weight/max_weight), so
    both errors grow by 1/total_ratio when the nodes' weights are small against max_weight.
    """
    q = SECAGG_QUANTIZATION_RANGE
    return (n_nodes * (clipping_range / q) * 4 + clipping_range * n_nodes / q * 4) / total_ratio


def l2_clip(delta: Sequence[np.ndarray], clip: float) -> tuple[list[np.ndarray], bool]:
    """Scale an update to L2 norm <= clip (the DP sensitivity bound); returns (arrays, was_clipped)."""
    norm = float(np.sqrt(sum(float(np.sum(a * a)) for a in delta)))
    if norm <= clip:
        return [a.copy() for a in delta], False
    return [a * (clip / norm) for a in delta], True
