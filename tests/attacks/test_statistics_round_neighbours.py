"""Attack: the coordinator of a horizontal job that standardises reads one person's value from a
node's moment vector in the statistics round.

Strongest setting: no SecAgg+ (the coordinator sees the node's own vector, not only the pooled
sum), and the attacker knows every other row of the node and the two values the victim may have
(the declared minimum or maximum age). It guesses with the optimal test for two Gaussians of known
means (the nearer mean). Without noise it is always right. With record-level DP each node adds
`pooled_stats.noisy_moments` noise, and the success rate must stay within what the release's own
(epsilon, delta) allows, (e^epsilon + delta) / (1 + e^epsilon), with epsilon from the same
accountant that charges it (`dp_sgd.accountant_epsilon`): measured over 20,000 runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from federated import dp_sgd, pooled_stats
from federated.datasets import ElementInfo
from federated.jobs import Encoding, Method

AGE = ElementInfo("civil.age", "int", 0, 130)
INFOS, ENCS = [AGE], [Encoding(method=Method.STANDARDISE)]
DELTA = 1e-6
RUNS = 20_000


def _vectors(n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """The node's moment vector with the victim at the youngest and at the oldest declared age."""
    others = np.random.default_rng(3).integers(18, 90, n - 1).astype(np.float64)
    young = np.r_[others, AGE.min][:, None]
    old = np.r_[others, AGE.max][:, None]
    return pooled_stats.moments(INFOS, ENCS, young), pooled_stats.moments(INFOS, ENCS, old)


def _attack(release: Callable[[np.ndarray, np.random.Generator], np.ndarray], runs: int, seed: int) -> float:
    """Share of runs in which the nearer-mean guess names the victim's true value."""
    young, old = _vectors()
    rng = np.random.default_rng(seed)
    right = 0
    for k in range(runs):
        truth_old = bool(k % 2)
        seen = release(old if truth_old else young, rng)
        guess_old = float(np.sum((seen - old) ** 2)) < float(np.sum((seen - young) ** 2))
        right += guess_old == truth_old
    return right / runs


def test_without_noise_the_moment_vector_gives_the_victims_value_away() -> None:
    assert _attack(lambda m, rng: m, 200, seed=1) == 1.0


def test_with_record_level_dp_the_attack_stays_within_the_releases_epsilon() -> None:
    z = dp_sgd.STATS_NOISE_MULTIPLIER
    epsilon = dp_sgd.accountant_epsilon(0.0, 1.0, 0, DELTA, stats_sigma=z)  # the statistics release alone
    bound = (math.exp(epsilon) + DELTA) / (1 + math.exp(epsilon))
    success = _attack(lambda m, rng: pooled_stats.noisy_moments(m, 1000, 1000.0, z, rng), RUNS, seed=2)
    se = math.sqrt(0.25 / RUNS)
    assert success <= bound + 3 * se, (success, bound)
    # ...and it is as good as the Gaussian's own limit says (the test is the optimal one, so a
    # mechanism adding less noise than stated would show here): Phi(|difference| / (2 sigma)).
    young, old = _vectors()
    sigma = z * math.sqrt(young.size) / 1000
    expected = 0.5 * (1 + math.erf(float(np.linalg.norm(old - young)) / (2 * sigma) / math.sqrt(2)))
    assert abs(success - expected) <= 3 * se, (success, expected)
