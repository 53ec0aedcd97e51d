"""Record-level differential privacy at each node: DP-SGD, accounted per dataset.

A job with `dp.unit = "record"` protects each person's record at every node: the node trains its
local model with DP-SGD (Abadi et al. 2016): each step draws a Poisson sample of its training
rows with rate q = batch_size / n, clips each example's gradient to L2 norm `clip`, adds Gaussian
noise of standard deviation sigma * clip to the sum and divides by the expected batch size. The
node's whole participation in the job (rounds x local_epochs x ceil(1/q) steps) is one
composition of Poisson-subsampled Gaussian mechanisms; Google's `dp-accounting` RDP accountant
gives its epsilon at the job's delta, and `calibrate` picks the smallest sigma (to 0.1 %) whose
epsilon stays within the job's. Everything the node sends (model updates) is post-processing of
these steps, so the whole job is (epsilon, delta)-DP for each record of this node's dataset,
whatever the other nodes or the coordinator do. The evaluation histograms are computed on the
held-out rows only, which DP-SGD never touches (they are a separate, non-DP release; see
docs/FEDERATED.md).

The node's training row count is released too, and only as a noisy count: the sampling rate, the
number of steps, the noise calibration, the divisor of each step and the update's weight all
depend on it, so an exact count would be in everything the node sends, and under the add/remove
relation the accountant uses a count that moves by one gives a record's presence away. So the
node releases `noisy_rows` (its count plus Gaussian noise of sd `COUNT_NOISE_MULTIPLIER`, drawn
once per run) and plans from that alone; the accountant composes that release with the steps.

A job that standardises features releases one more thing before training: each node's moment
vector in the statistics round (`federated/pooled_stats.py`). With record-level DP that release is
a Gaussian mechanism too, with the fixed noise multiplier `STATS_NOISE_MULTIPLIER` (`noisy_moments`
there), and the accountant composes it with the DP-SGD steps: `calibrate` then picks the DP-SGD
noise for what is left of epsilon (2.3 % more noise at epsilon = 1 on the Census-Income schedule,
0.1 % at epsilon = 4; `tests/unit/test_fed_dp_sgd.py`).

Noise and sampling draw from a generator seeded with 128 bits from the OS (`secrets`), never from
the job's public seed: predictable noise would be no protection.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from federated import model
from federated.jobs import DPUnit, JobSpec, Mode

_SIGMA_MAX = 1e4
# The statistics round's noise multiplier (sensitivity units). Fixed, not calibrated: at 20 the
# release costs DP-SGD a few percent more noise at epsilon = 1, and it leaves the pooled mean of a
# feature scaled to [0, 1] within about 0.002 over 100,000 rows (docs/FEDERATED.md, "Record-level DP").
STATS_NOISE_MULTIPLIER = 20.0
# The row count's noise (sensitivity 1 under add/remove, so this is also its sd in rows). Fixed and
# public: it costs DP-SGD 0.4 % more noise at epsilon = 1 and 0.07 % at epsilon = 4 on the
# Census-Income schedule (20 would cost 2.5 %), and it moves the sampling rate and step divisor of
# a 50,000-row node by 0.1 % (tests/unit/test_fed_dp_sgd.py).
COUNT_NOISE_MULTIPLIER = 50.0
# delta is the probability that the guarantee fails outright, so it must be far below one person in
# the dataset: a node plans a job only when delta <= 1 / (DELTA_ROWS_FACTOR x n), n its released
# (noisy) row count, so the check is post-processing of that release and no refusal depends on the
# exact count. The ledger also sums delta per dataset against a cap (policies/budgets.py).
DELTA_ROWS_FACTOR = 10


def delta_problem(delta: float, rows: float) -> str | None:
    """Why a job's delta is too large for a dataset of `rows` (released) rows, or None."""
    if delta * DELTA_ROWS_FACTOR * rows <= 1.0 + 1e-9:
        return None
    most = 1.0 / (DELTA_ROWS_FACTOR * rows)
    exponent = math.floor(math.log10(most))
    allowed = math.floor(most / 10.0**exponent) * 10.0**exponent  # one significant digit, rounded down
    return (
        f"delta {delta:g} is too large for this node's dataset: record-level DP needs delta at most"
        f" 1/({DELTA_ROWS_FACTOR} n) for its (released) row count n; ask for a delta of at most {allowed:.0e}"
    )


def noisy_rows(n: int, rng: np.random.Generator) -> float:
    """The row count a node releases: n plus N(0, COUNT_NOISE_MULTIPLIER^2), at least 1
    (post-processing). Draw it once per run: every message of the run plans from the same value."""
    if n < 0:
        raise ValueError("a row count cannot be negative")
    return max(1.0, n + float(rng.normal(0.0, COUNT_NOISE_MULTIPLIER)))


def accountant_epsilon(
    sigma: float,
    q: float,
    steps: int,
    delta: float,
    stats_sigma: float | None = None,
    count_sigma: float | None = None,
) -> float:
    """epsilon of `steps` Poisson(q)-subsampled Gaussian steps with noise multiplier sigma (RDP),
    composed with one full Gaussian release of noise multiplier `stats_sigma` and one of
    `count_sigma` (the row count) when given."""
    if steps <= 0 and stats_sigma is None and count_sigma is None:
        return 0.0
    # Imported here: dp-accounting pulls in scipy.stats (about 1-2 s), and Flower starts a fresh
    # ClientApp process for every message, most of which never account anything.
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    if steps > 0:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    if stats_sigma is not None:
        accountant.compose(dp_accounting.GaussianDpEvent(stats_sigma))
    if count_sigma is not None:
        accountant.compose(dp_accounting.GaussianDpEvent(count_sigma))
    return float(accountant.get_epsilon(delta))


def fixed_releases_epsilon(delta: float, standardises: bool) -> float:
    """epsilon of what a record-DP node releases whatever its noise multiplier: its row count and, in
    a job that standardises, its moment vector. A job asking no more than this cannot train."""
    return accountant_epsilon(
        0.0, 1.0, 0, delta, STATS_NOISE_MULTIPLIER if standardises else None, COUNT_NOISE_MULTIPLIER
    )


def untrainable(job: JobSpec) -> str | None:
    """Why a horizontal record-DP job cannot train at any node (None if it can): its epsilon does
    not cover what every node releases before training, whatever its data. Each run would draw and
    release its count, then fail; so such a job is refused at admission, from public figures."""
    if job.mode is not Mode.HORIZONTAL or job.dp is None or job.dp.unit is not DPUnit.RECORD:
        return None
    floor = fixed_releases_epsilon(job.dp.delta, job.standardises())
    if job.dp.epsilon > floor:
        return None
    what = "its row count and moment vector" if job.standardises() else "its row count"
    return (
        f"record-level DP at epsilon {job.dp.epsilon:g} cannot train: what each node releases before"
        f" training ({what}) spends {floor:.3g} at delta {job.dp.delta:g}"
    )


def calibrate(
    epsilon: float,
    delta: float,
    q: float,
    steps: int,
    stats_sigma: float | None = None,
    count_sigma: float | None = None,
) -> float:
    """Smallest noise multiplier (to 0.1 % relative) whose accounted epsilon is <= epsilon.

    Returns `hi` of a bracket lo < hi <= 1.001 lo with spent(lo) > epsilon >= spent(hi), each end
    asked of the accountant. Each question costs about 0.1 s (the RDP of a subsampled Gaussian over
    many orders), and every node plan asks it: so the next sigma is interpolated where log epsilon,
    nearly linear in log sigma, crosses the target (`_next_sigma`). Over nine schedules from 3 to
    5,000 steps that asked 57 questions, against 116 for bisection, for the same sigmas."""

    def spent(sigma: float) -> float:
        return accountant_epsilon(sigma, q, steps, delta, stats_sigma, count_sigma)

    lo, hi, e_lo = 0.05, 1.0, None  # spent(0.05) is taken to be over: never asked unless bisected to
    e_hi = spent(hi)
    while e_hi > epsilon:
        lo, e_lo, hi = hi, e_hi, hi * 2
        if hi > _SIGMA_MAX:
            # No figure of the schedule here: it follows from the node's (noisy) row count.
            raise ValueError(f"epsilon {epsilon:g} is out of reach for this node's DP-SGD schedule")
        e_hi = spent(hi)
    # Regula falsi in (log sigma, log epsilon), Illinois variant: an end kept twice in a row has its
    # weight halved, so the bracket closes from both sides.
    over = None if e_lo is None else _log_ratio(e_lo, epsilon)  # > 0
    under, kept = _log_ratio(e_hi, epsilon), ""  # <= 0
    while hi / lo > _CALIBRATION_RATIO:
        mid = math.sqrt(lo * hi) if over is None else _next_sigma(lo, over, hi, under)
        e_mid = spent(mid)
        if e_mid > epsilon:
            lo, over = mid, _log_ratio(e_mid, epsilon)
            under, kept = (under / 2 if kept == "hi" else under), "hi"
        else:
            hi, under = mid, _log_ratio(e_mid, epsilon)
            over, kept = (over / 2 if kept == "lo" and over is not None else over), "lo"
    return hi


_CALIBRATION_RATIO = 1.001


def _log_ratio(spent: float, epsilon: float) -> float:
    return math.log(max(spent, 1e-300) / epsilon)  # an accountant's 0 (nothing released) stays finite


def _next_sigma(lo: float, over: float, hi: float, under: float) -> float:
    """Where the line through (log lo, over) and (log hi, under) crosses zero, kept 0.9 of the
    resolution inside each end: a crossing that close to an end then closes the bracket from the
    other side in one question."""
    a, b = math.log(lo), math.log(hi)
    x = a + (b - a) * over / (over - under)
    margin = 0.9 * math.log(_CALIBRATION_RATIO)
    return math.exp(min(max(x, a + margin), b - margin))


class LedgerEntry(TypedDict):
    """What a node's ledger records of a DP plan before its first release (`admission.record_dp_plan`)."""

    epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class Plan:
    """One node's DP-SGD schedule for a whole job, and what its accountant says it spends."""

    sigma: float
    sample_rate: float
    steps_per_round: int
    steps: int
    epsilon: float  # the accountant's epsilon for all `steps`, the count and the statistics release (<= the job's)
    delta: float
    clip: float
    rows: float  # the released (noisy) training row count the schedule is made from
    stats_sigma: float | None = None  # the statistics round's noise multiplier, in a job that standardises
    count_sigma: float | None = COUNT_NOISE_MULTIPLIER  # the row count's

    @property
    def expected_batch(self) -> float:
        """Each step's divisor: from the released count, never the exact one."""
        return self.sample_rate * self.rows

    def ledger_entry(self) -> LedgerEntry:
        """What `admission.record_dp_plan` records of this plan."""
        return LedgerEntry(
            epsilon=self.epsilon, noise_multiplier=self.sigma, sample_rate=self.sample_rate, steps=self.steps
        )

    def as_metrics(self) -> dict[str, float | int]:
        return {
            "dp_epsilon": self.epsilon,
            "dp_sigma": self.sigma,
            "dp_sample_rate": self.sample_rate,
            "dp_steps": self.steps,
            "dp_rows_noisy": self.rows,
            **({"dp_count_sigma": self.count_sigma} if self.count_sigma is not None else {}),
            **({"dp_stats_sigma": self.stats_sigma} if self.stats_sigma is not None else {}),
        }


def plan(
    epsilon: float,
    delta: float,
    clip: float,
    *,
    rows: float,
    batch: int,
    rounds: int,
    local_epochs: int,
    standardises: bool = False,
    count_sigma: float | None = COUNT_NOISE_MULTIPLIER,
) -> Plan:
    """The node's schedule from its released row count (`noisy_rows`); `standardises`: the job's
    statistics round is one more release to account; `count_sigma` None: the count is public
    already (a vertical node's aligned rows), so no count release is accounted."""
    if not rows > 0:
        raise ValueError("no training rows")
    if (why := delta_problem(delta, rows)) is not None:
        raise ValueError(why)
    q = min(1.0, batch / rows)
    per_round = local_epochs * math.ceil(1 / q)
    steps = rounds * per_round
    stats = STATS_NOISE_MULTIPLIER if standardises else None
    sigma = calibrate(epsilon, delta, q, steps, stats, count_sigma)
    spent = accountant_epsilon(sigma, q, steps, delta, stats, count_sigma)
    return Plan(sigma, q, per_round, steps, spent, delta, clip, rows, stats, count_sigma)


def train(
    w: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    p: Plan,
    *,
    lr: float,
    l2: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`p.steps_per_round` DP-SGD steps of logistic regression from w; returns new weights.

    An example whose gradient is not finite (weights or statistics a coordinator crafted so that one
    row's logit overflows, inf - inf = NaN) contributes zero, before clipping, like any example
    clipped to norm 0 (within the clip, so the sensitivity is unchanged): no error, and nothing
    else, depends on whether such a row is in the batch."""
    rng = rng or np.random.default_rng(secrets.randbits(128))
    w = w.copy()
    n = len(y)
    expected = p.expected_batch
    x1 = np.hstack([x, np.ones((n, 1))])
    for _ in range(p.steps_per_round):
        idx = np.flatnonzero(rng.random(n) < p.sample_rate)
        g = np.zeros_like(w)
        if len(idx):
            with np.errstate(all="ignore"):  # overflow is zeroed below, never raised or propagated
                err = model.lr_predict(w, x[idx]) - y[idx]
                per_example = err[:, None] * x1[idx]  # (b, d + 1): bias gradient last
                per_example[~np.all(np.isfinite(per_example), axis=1)] = 0.0
                norms = np.linalg.norm(per_example, axis=1)
            per_example *= np.minimum(1.0, p.clip / np.maximum(norms, 1e-12))[:, None]
            g = per_example.sum(axis=0)
        g = (g + rng.normal(0.0, p.sigma * p.clip, size=w.shape)) / expected
        g[:-1] += l2 * w[:-1]  # the regulariser is data-independent
        w -= lr * g
    return w
