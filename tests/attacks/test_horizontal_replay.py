"""A coordinator asking a horizontal record-DP node for the same release again within one run.

Flower builds a client per message, and the node's ledger is charged once per run
(tests/attacks/test_dp_rerun.py). A coordinator that sends the same `fit` (same weights) k times
gets k updates, each with fresh DP-SGD noise, and their mean has the noise cut by √k (measured
below as the positive control); the statistics round likewise. Each release is now claimed once
per run on disk, in order, never past the job's rounds (federated/run_releases.py); evaluate
once per run, after the last round (tests/attacks/test_holdout_histogram_readout.py). A further
run is charged again (test_dp_rerun.py). Real HorizontalClient over a real store and ledger.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federated import dp_sgd, pooled_stats
from federated.admission import LedgerAdmission
from federated.horizontal_client import HorizontalClient
from federated.jobs import JobSpec
from federated.node import NodeConfig
from federated.run_releases import RunReleases
from tests.record_dp_node import record_dp_node
from xgate.errors import InvalidInput


def _node(tmp_path: Path, **job_fields: object) -> tuple[JobSpec, NodeConfig]:
    return record_dp_node(tmp_path, "h-replay", **job_fields)


def _fit(job: JobSpec, nc: NodeConfig, rnd: int, run: str = "1") -> np.ndarray:
    client = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id=run)  # a client per message
    w0 = client.get_parameters({})
    return np.asarray(client.fit(w0, {"server_round": rnd})[0][0])


def test_each_round_is_answered_once_and_in_order(tmp_path: Path) -> None:
    job, nc = _node(tmp_path)
    _fit(job, nc, 1)
    with pytest.raises(InvalidInput, match="fit round 1 is out of turn: this node answered up to round 1 of 3"):
        _fit(job, nc, 1)  # the same round again: a fresh noisy copy to average
    _fit(job, nc, 3)  # a round may be skipped (a node that missed one), never taken again
    with pytest.raises(InvalidInput, match="out of turn"):
        _fit(job, nc, 2)
    with pytest.raises(InvalidInput, match="round 4 is out of turn"):
        _fit(job, nc, 4, run="2")  # past the job's rounds, in any run
    with pytest.raises(InvalidInput, match="without its round"):
        HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="3").fit([np.zeros(2)], {})


def test_the_statistics_round_is_answered_once_and_before_training(tmp_path: Path) -> None:
    job, nc = _node(tmp_path, encodings={"civil.age": "standardise"})
    stats = {pooled_stats.PHASE_KEY: pooled_stats.STATISTICS_PHASE}
    HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="1").fit([np.zeros(1)], stats)
    with pytest.raises(InvalidInput, match="already answered 'statistics'"):
        HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="1").fit([np.zeros(1)], stats)
    releases = RunReleases(nc.ledger.parent / "fl-cache" / job.job_id / "run-2")
    releases.numbered("fit", 1, job.rounds)
    with pytest.raises(InvalidInput, match="comes before any 'fit'"):
        releases.once("statistics", before="fit")


def test_evaluate_answers_once_after_the_last_round_and_keeps_dp_jobs_training_counts(tmp_path: Path) -> None:
    job, nc = _node(tmp_path)
    client = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="1")
    w = client.get_parameters({})
    with pytest.raises(
        InvalidInput, match="evaluate round 1 refused: a record-level DP job is evaluated once, after its last round"
    ):
        client.evaluate(w, {"server_round": 1})
    _, _, metrics = client.evaluate(w, {"server_round": 3})
    assert "hist_pos" in metrics and "train_pos" not in metrics and "train_n" not in metrics
    with pytest.raises(InvalidInput, match="evaluate round 3 is out of turn"):
        client.evaluate(w, {"server_round": 3})
    # A statistics round in a job that standardises nothing is refused, not a crash.
    with pytest.raises(InvalidInput, match="no statistics round"):
        client.fit(w, {pooled_stats.PHASE_KEY: pooled_stats.STATISTICS_PHASE})


def test_positive_control_averaging_repeated_updates_strips_the_noise(tmp_path: Path) -> None:
    """What answering the same round k times would have given away (DP-SGD noise, same data)."""
    job, nc = _node(tmp_path)
    client = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="p")
    data = client.data({})
    plan = client.dp_plan(len(data.y_train))
    w0 = np.zeros(data.x_train.shape[1] + 1)
    runs = [dp_sgd.train(w0, data.x_train, data.y_train, plan, lr=job.learning_rate, l2=job.l2)[0] for _ in range(120)]
    spread_one = np.std(runs)
    spread_mean = np.std([np.mean(runs[i : i + 10]) for i in range(0, 120, 10)])
    assert spread_mean < spread_one / 1.8  # ten copies: the noise shrinks by about √10 ≈ 3.2


def test_a_run_that_only_evaluates_is_charged_in_a_dp_job(tmp_path: Path) -> None:
    """New runs of the approved job sending only `evaluate` (holdout histograms under weights of the
    coordinator's choosing): each is a run, charged before it answers, until the cap refuses."""
    job, nc = _node(tmp_path)  # ε 4 per run, cap 100: the approval paid for the first run
    admit = LedgerAdmission(nc.ledger, nc.store)
    w = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="0").get_parameters({})
    for run in range(1, 4):
        HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id=str(run)).evaluate(w, {"server_round": 3})
    assert admit.spent("synth") == 4.0 * 3  # the approval's run, then two more charged
