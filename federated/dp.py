"""Node-level DP with fixed clipping: the noise each node adds, and its accounting (pure).

Each round releases the unweighted mean of k >= m node updates (m = the job's min_nodes), each
clipped to L2 norm C, so one node's whole data moves the sum by at most C. The noise is added by
the nodes themselves, not the coordinator (`node_noise_sd`): under SecAgg+, which opens only the
sum, each adds Gaussian noise of sd z*C/sqrt(m), so the sum carries sd z*C*sqrt(k/m) >= z*C
whatever the coordinator does; without SecAgg+ the coordinator sees each update, so each node
adds the whole z*C. Every node takes part in every round, so there is no sampling amplification:
a round is the Gaussian mechanism with noise multiplier z, whose Renyi DP at order a is a/(2 z^2) (Mironov 2017);
T rounds compose additively, and (a, rho)-RDP implies (rho + log(1/delta)/(a-1), delta)-DP.
Flower's own RdpAccountant runs on the `dp-accounting` package (a dependency since record-level DP);
`epsilon_spent` cross-checks against it (`flower_epsilon`). The unit is client-level DP: the
neighbouring datasets differ by one whole node's data.
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


def node_noise_sd(noise_multiplier: float, clip: float, min_nodes: int, secagg: bool) -> float:
    """The sd of the Gaussian noise one node adds to each coordinate of its clipped update.

    Under SecAgg+ the coordinator opens only the sum of k >= min_nodes updates, whose noise then
    has sd z*C*sqrt(k/m) >= z*C; without it, each update is seen alone and carries all of z*C."""
    if noise_multiplier < 0 or clip <= 0 or min_nodes < 1:
        raise ValueError("node noise needs a noise multiplier >= 0, a clip > 0 and min_nodes >= 1")
    return noise_multiplier * clip / math.sqrt(min_nodes) if secagg else noise_multiplier * clip
