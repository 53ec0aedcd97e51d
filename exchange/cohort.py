"""The cohort (bronze) view's privacy mechanism: randomized response on the masked signs (pure, no I/O).

The requester decrypts every slot's sign itself, so no party can add noise to a count after the
fact. The gateway instead flips slots before anyone decrypts: it knows each slot's mask (r, s'),
and with probability p = 1 / (1 + e^eps) per slot and criterion it masks the *negated* comparison,

    v  = r*d + s'          (unflipped: v >= 0 exactly when d >= 0)
    v' = -r*d - s' - 1 = -v - 1   (flipped:   v' >= 0 exactly when d <= -1)

so the decrypted sign is the verdict's exact opposite (the +-1-unit boundaries stay exact) and
|v'| differs from |v| by one. Each person's verdict on one criterion is then eps-differentially
private in one query (randomized response, Warner 1965; ln((1-p)/p) = eps); k criteria cost k*eps.
What this does NOT cover is the magnitude |v|, which still carries about a bit on the order of
magnitude of |d| (docs/PROTOCOL.md, "Masks"; bench/privacy.py measures what it adds).

The requester debiases: with c true passes among n, the observed count n_obs has mean
c(1-p) + (n-c)p and variance n p (1-p) whatever c is, so (n_obs - p n) / (1 - 2p) is unbiased
with standard error sqrt(n p (1-p)) / (1 - 2p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# The reason a register node gives (error details "refusal") for a cohort with a member it does
# not know. The gateway charges that refusal like an answer (exchange/service.py): it is one.
COHORT_MEMBER_UNKNOWN = "cohort_member_unknown"
MAX_EPSILON = 20.0  # beyond this p < 2e-9: no protection worth the name, refused as a setting


def flip_probability(epsilon: float) -> float:
    """p = 1 / (1 + e^eps): the randomized-response flip probability that gives eps per slot."""
    if not (math.isfinite(epsilon) and 0 < epsilon <= MAX_EPSILON):
        raise ValueError(f"epsilon per criterion must be within (0, {MAX_EPSILON:g}]")
    return 1.0 / (1.0 + math.exp(epsilon))


def attack_bound(epsilon: float) -> float:
    """The best success rate any attacker can have guessing one eps-DP bit with a fair prior."""
    return math.exp(epsilon) / (1.0 + math.exp(epsilon))


def flip_masks(
    direction: int, threshold: int, r: np.ndarray, s: np.ndarray, flips: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(weight, offset) for `PublicContext.masked_combination`: Enc(weight*S + offset) = Enc(+-v - flip).

    Unflipped slots: weight = direction*r, offset = s' - direction*r*T (v = r*d + s').
    Flipped slots: both negated and one subtracted, v' = -v - 1.
    """
    if direction not in (-1, 1):
        raise ValueError("direction must be -1 (at most) or +1 (at least)")
    if not len(r) == len(s) == len(flips):
        raise ValueError("masks and flips disagree on the number of slots")
    sign = np.where(np.asarray(flips, dtype=bool), -1, 1)
    weight = sign * direction * r.astype(np.int64)
    offset = s.astype(object) - direction * r.astype(object) * int(threshold)
    offset = sign.astype(object) * offset - np.asarray(flips, dtype=bool).astype(object)
    return weight, offset


@dataclass(frozen=True)
class CohortCount:
    """One criterion's released count at the cohort view, as the requester reads it."""

    noisy_count: int  # slots whose decrypted sign says "passes" (after the gateway's flips)
    subjects: int
    flip_probability: float
    estimate: float  # unbiased: (noisy - p n) / (1 - 2p)
    standard_error: float

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """A normal-approximation interval for the true count, clipped to [0, n]."""
        if not 0 < level < 1:
            raise ValueError("level must be within (0, 1)")
        z = NormalDist().inv_cdf(0.5 + level / 2)
        lo, hi = self.estimate - z * self.standard_error, self.estimate + z * self.standard_error
        return max(0.0, lo), min(float(self.subjects), hi)


def debias(noisy_count: int, subjects: int, p: float) -> CohortCount:
    if not 0 <= p < 0.5:
        raise ValueError("flip probability must be within [0, 0.5)")
    if not 0 <= noisy_count <= subjects:
        raise ValueError("the noisy count must be within 0..subjects")
    scale = 1.0 - 2.0 * p
    estimate = (noisy_count - p * subjects) / scale
    error = math.sqrt(subjects * p * (1.0 - p)) / scale
    return CohortCount(noisy_count, subjects, p, estimate, error)


def noisy_count_pmf(true_count: int, subjects: int, p: float) -> np.ndarray:
    """Exact distribution of the noisy count: Binomial(c, 1-p) + Binomial(n-c, p), indices 0..n."""
    kept = _binomial(true_count, 1.0 - p)
    added = _binomial(subjects - true_count, p)
    return np.convolve(kept, added)


def _binomial(n: int, q: float) -> np.ndarray:
    k = np.arange(n + 1)
    logs = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(n + 1)])
    with np.errstate(divide="ignore"):
        out: np.ndarray = np.exp(logs + k * np.log(q) + (n - k) * np.log1p(-q)) if 0 < q < 1 else (k == n * q) * 1.0
    return out


def epsilon_per_query(epsilon_per_criterion: float, criteria: int) -> float:
    """Basic composition: one person's k verdicts in one query."""
    return epsilon_per_criterion * criteria
