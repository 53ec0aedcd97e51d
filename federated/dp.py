"""Node-level DP with fixed clipping: the noise each node adds, and its accounting (pure).

The unit is one node's whole data. Each round, each node clips its update to L2 norm C and adds
Gaussian noise of sd z*C to it before it leaves (`node_noise_sd`): its update alone is then the
Gaussian mechanism with noise multiplier z, so whatever happens to it afterwards (SecAgg+ or not,
an honest or a dishonest coordinator, per-coordinate clipping, weighting, averaging) is
post-processing. This costs sqrt(k) more noise in the mean of k updates than central DP (z*C/k,
added by a coordinator the nodes would have to trust; xgate did that before, see docs/FEDERATED.md).
Every node takes part in every round, so there is no sampling amplification: a round is the
Gaussian mechanism with noise multiplier z, whose Renyi DP at order a is a/(2 z^2) (Mironov 2017);
T rounds compose additively, and (a, rho)-RDP implies (rho + log(1/delta)/(a-1), delta)-DP.
Flower's own RdpAccountant runs on the `dp-accounting` package (a dependency since record-level DP);
`epsilon_spent` cross-checks against it (`flower_epsilon`). The neighbouring datasets differ by
one whole node's data.
"""

from __future__ import annotations

import functools
import math

ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 256)))


def epsilon_spent(noise_multiplier: float, rounds: int, delta: float) -> float:
    """epsilon after `rounds` Gaussian releases with noise multiplier z (no amplification)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    rdp_unit = rounds / (2 * noise_multiplier**2)
    return min(a * rdp_unit + math.log(1 / delta) / (a - 1) for a in ORDERS)


@functools.cache  # every node computes it for every update it sends
def noise_for_epsilon(epsilon: float, rounds: int, delta: float) -> float:
    """Smallest noise multiplier (to 1e-4 relative) whose epsilon after `rounds` is <= epsilon."""
    lo, hi = 1e-3, 1.0
    while epsilon_spent(hi, rounds, delta) > epsilon:
        hi *= 2
        if hi > 1e7:
            raise ValueError("epsilon too small for this many rounds")
    for _ in range(60):
        mid = (lo + hi) / 2
        if epsilon_spent(mid, rounds, delta) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def flower_epsilon(noise_multiplier: float, rounds: int, delta: float, nodes: int) -> float | None:
    """Flower's RDP accountant (no amplification), or None when dp-accounting is not installed."""
    try:
        from flwr.supercore.privacy_accounting import (
            GaussianPrivacyEvent,
            NeighboringRelation,
            PrivacyConfig,
            SamplingMethod,
        )
        from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

        acc = RdpAccountant(
            PrivacyConfig(delta, nodes, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
        )
        acc.compose(GaussianPrivacyEvent(noise_multiplier, nodes, nodes), rounds)
        return acc.get_epsilon(delta)
    except (ImportError, RuntimeError, ModuleNotFoundError):
        return None


def node_noise_sd(noise_multiplier: float, clip: float) -> float:
    """The sd of the Gaussian noise a node adds to each coordinate of its clipped update: z * C."""
    if noise_multiplier < 0 or clip <= 0:
        raise ValueError("node noise needs a noise multiplier >= 0 and a clip > 0")
    return noise_multiplier * clip
