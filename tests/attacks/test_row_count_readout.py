"""The coordinator reading a record-DP node's exact training row count.

DP-SGD's schedule is made from the node's row count n: the sampling rate q = batch / n, the steps
per round ⌈1/q⌉, the noise calibrated for them, each step's divisor q·n, and FedAvg's weight n.
All of it reached the coordinator (`dp_sample_rate` in the summary, the update's weight), so it
read n exactly: batch / q. Under the add/remove relation DP-SGD's accountant uses, a count that
moves by one says whether one more person is in the node's data. Now the node draws a noisy count
once per run (`dp_sgd.noisy_rows`, sd `COUNT_NOISE_MULTIPLIER`, accounted with the steps) and
plans, divides and weighs by that alone. Real HorizontalClient over a real store and ledger.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from federated import dp_sgd, node, pooled_stats
from federated.admission import LedgerAdmission
from federated.horizontal_client import HorizontalClient
from federated.jobs import JobSpec
from federated.node import NodeConfig
from tests.record_dp_node import record_dp_node
from xgate.errors import PolicyDenied

pytestmark = pytest.mark.slow(seconds=35)  # many noisy releases per test: handed out first

RUNS = 20_000


def _node(tmp_path: Path, cap: float = 1000.0, **job_fields: object) -> tuple[JobSpec, NodeConfig]:
    return record_dp_node(tmp_path, "h-count", cap=cap, rounds=1, batch_size=32, **job_fields)


def _one_run(job: JobSpec, nc: NodeConfig, run: str) -> tuple[int, dict[str, object], int]:
    """What the coordinator sees in one run: the update's weight and the evaluation's metrics; and
    the node's exact training row count (for the test only)."""
    client = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id=run)
    w0 = client.get_parameters({})
    fit = client.fit(w0, {"server_round": 1})
    metrics = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id=run).evaluate(w0, {"server_round": 1})[2]
    return fit[1], metrics, len(client.data({}).y_train)


def test_a_run_releases_one_noisy_count_everywhere_and_never_the_exact_one(tmp_path: Path) -> None:
    job, nc = _node(tmp_path)
    seen = []
    for run in range(4):
        fit_weight, metrics, n = _one_run(job, nc, str(run))
        rows = float(metrics["dp_rows_noisy"])  # type: ignore[arg-type]
        # Within a run every message plans from the same released count...
        assert fit_weight == round(rows)
        assert job.batch_size / float(metrics["dp_sample_rate"]) == pytest.approx(rows)  # type: ignore[arg-type]
        assert metrics["dp_count_sigma"] == dp_sgd.COUNT_NOISE_MULTIPLIER
        seen.append(rows)
    # ... and what the coordinator reads back is not n: within the count's noise, never exact.
    assert all(r != n for r in seen) and len(set(seen)) == len(seen)
    assert all(abs(r - n) < 6 * dp_sgd.COUNT_NOISE_MULTIPLIER for r in seen)


def test_the_statistics_round_weighs_by_the_same_noisy_count(tmp_path: Path) -> None:
    job, nc = _node(tmp_path, encodings={"civil.age": "standardise"})
    stats = {pooled_stats.PHASE_KEY: pooled_stats.STATISTICS_PHASE}
    client = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="s")
    weight = client.fit([np.zeros(1)], stats)[1]
    n = int((~node.labelled_rows(job, nc).test).sum())
    rows = client.dp_plan(n).rows
    # The run's kept count, not the exact one. Compared unrounded: round(rows) is n whenever the
    # noise (sd 50) is under half a row, in 0.8 % of runs.
    assert weight == round(rows) and rows != n


def test_a_run_is_paid_for_before_its_count_is_drawn(tmp_path: Path) -> None:
    """A coordinator starting runs that are refused or fail would otherwise collect a fresh noisy
    count from each, unpaid, and average them back to n. Runs past the cap draw nothing."""
    job, nc = _node(tmp_path, cap=8.0)  # ε 4: the approval pays for the first run, the cap for one more
    admit = LedgerAdmission(nc.ledger, nc.store)
    for run in ("1", "2"):
        HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id=run).dp_plan(300)
    assert admit.spent("synth") == 8.0
    with pytest.raises(PolicyDenied, match="each run spends the job's ε again"):
        HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="3").dp_plan(300)
    runs = nc.ledger.parent / "fl-cache" / job.job_id
    assert (runs / "run-2" / "value-rows").exists() and not (runs / "run-3" / "value-rows").exists()


def test_a_job_asking_less_than_the_count_alone_spends_is_refused_at_admission(tmp_path: Path) -> None:
    """Below the count's own ε (0.08 at δ = 1e-6) no run could train, and each would release a
    count and then fail: nodes refuse such a job when they decide it, from public figures only."""
    job, nc = _node(tmp_path)
    tiny = job.model_copy(update={"job_id": "tiny", "dp": job.dp.model_copy(update={"epsilon": 0.05})})  # type: ignore[union-attr]
    decision = LedgerAdmission(nc.ledger, nc.store)(tiny, "r0")
    assert not decision.approved
    assert decision.reason.startswith("record-level DP at epsilon 0.05 cannot train: what each node releases")
    assert 0.05 < dp_sgd.fixed_releases_epsilon(1e-6, standardises=False) < 0.1
    assert dp_sgd.untrainable(job.model_copy(update={"dp": job.dp.model_copy(update={"epsilon": 0.5})})) is None  # type: ignore[union-attr]


def test_positive_control_the_exact_plan_gave_the_count_away() -> None:
    """What the schedule made from n itself told the coordinator: n = batch / q, exactly."""
    for n in (333, 400, 401, 26_000):
        q = dp_sgd.plan(4.0, 1e-6, 1.0, rows=n, batch=32, rounds=1, local_epochs=1).sample_rate
        assert round(32 / q) == n


def _presence_attack(release: object, runs: int, seed: int) -> float:
    """One person in (n + 1 rows) or out (n rows), the rest known: guess 'in' when the released
    count is above n + 1/2 (the likelihood-ratio test for Gaussian noise). Success over both worlds."""
    rng = np.random.default_rng(seed)
    n, right = 5_000, 0
    for _ in range(runs):
        present = bool(rng.integers(2))
        count = release(n + present, rng)  # type: ignore[operator]
        right += (count > n + 0.5) == present
    return right / runs


def test_presence_from_the_count_stays_within_its_bound() -> None:
    exact = _presence_attack(lambda n, rng: float(n), 1_000, seed=1)
    assert exact == 1.0  # the exact count: presence read every time
    success = _presence_attack(dp_sgd.noisy_rows, RUNS, seed=2)
    bound = NormalDist().cdf(1 / (2 * dp_sgd.COUNT_NOISE_MULTIPLIER))  # the best test's success: 0.504
    eps = dp_sgd.accountant_epsilon(0.0, 1.0, 0, 1e-6, count_sigma=dp_sgd.COUNT_NOISE_MULTIPLIER)
    assert bound <= math.exp(eps) / (1 + math.exp(eps))  # the count's own (ε, δ) allows at least that
    assert success <= bound + 3 * math.sqrt(0.25 / RUNS)
