"""A coordinator reading one held-out person's label from a horizontal node's evaluation.

A node answers `evaluate` with per-label score histograms of its held-out rows under the weights
the coordinator sends. Those rows never enter DP-SGD, so the exact histograms were outside a
record-DP job's guarantee: weights that put the victim (here the only person aged 119) alone in
the top bin make that bin's count in the positive or the negative histogram the victim's label.
The positive control reads it exactly through a real HorizontalClient. In a record-DP job the node
now answers once per run, after the last round, with 48 noisy bins (federated/holdout_dp.py); the
same attack, run 4,000 times per world against the node's own release function with the
attacker knowing every other held-out count, succeeds no more often than the job's ε allows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from federated import datasets, holdout_dp, node
from federated.admission import LedgerAdmission
from federated.horizontal_client import HorizontalClient
from federated.jobs import JobSpec, parse_job
from federated.node import NodeConfig
from xgate.errors import InvalidInput

N = 400
VICTIM = "p0"
# logit = 40 * age / 120 + b puts age 119 at 11.75 and every age <= 90 below 2.1: a bin of its own.
CRAFTED = np.array([40.0, 11.75 - 40.0 * 119 / 120])


def _node(tmp_path: Path, victim_label: int, dp: dict[str, object] | None) -> tuple[JobSpec, NodeConfig]:
    store, ledger, holdout = tmp_path / "store.sqlite", tmp_path / "ledger.sqlite", tmp_path / "holdout.txt"
    rng = np.random.default_rng(7)
    age = rng.integers(18, 91, N)
    label = (age + rng.normal(0, 15, N) > 55).astype(int)
    age[0], label[0] = 119, victim_label
    subjects = [f"p{i}" for i in range(N)]
    cols = {
        "civil.age": datasets.Column(age, "int", 0, 120),
        "tax.label": datasets.Column(label, "flag", 0, 1),
    }
    datasets.write_store(store, "synth", subjects, cols)
    holdout.write_text("\n".join(subjects[:100]) + "\n")  # the victim is held out
    body: dict[str, object] = {
        "job_id": "h-readout", "purpose": "fraud-model", "mode": "horizontal", "features": ["civil.age"],
        "encodings": {"civil.age": "minmax"}, "label": "tax.label", "label_holder": "tax", "rounds": 2,
        "secagg": False, "min_nodes": 1, **({"dp": dp} if dp else {}),
    }  # fmt: skip
    job = parse_job(body)
    LedgerAdmission(ledger, store).configure(["fraud-model"], {"synth": 1000.0})
    assert LedgerAdmission(ledger, store)(job, "r0").approved
    return job, NodeConfig(store, "r0", ledger, holdout, None)


def _evaluate(job: JobSpec, nc: NodeConfig, run: str) -> tuple[np.ndarray, np.ndarray]:
    client = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id=run)
    metrics = client.evaluate([CRAFTED], {"server_round": job.rounds})[2]
    return np.array(json.loads(metrics["hist_pos"])), np.array(json.loads(metrics["hist_neg"]))


def _victims_bin(bins: int) -> int:
    return int((11.75 + node.LOGIT_RANGE) / (2 * node.LOGIT_RANGE) * bins)


@pytest.mark.parametrize("victim_label", [0, 1])
def test_positive_control_without_dp_the_crafted_weights_read_the_victims_label(
    tmp_path: Path, victim_label: int
) -> None:
    job, nc = _node(tmp_path, victim_label, dp=None)
    pos, neg = _evaluate(job, nc, "1")
    top = _victims_bin(node.HIST_BINS)
    assert (pos[top], neg[top]) == (victim_label, 1 - victim_label)
    assert (
        pos[top + 1 :].sum() + neg[top + 1 :].sum() == 0
        and pos[top - 100 : top].sum() + neg[top - 100 : top].sum() == 0
    )


def test_a_record_dp_node_answers_the_crafted_weights_with_noisy_coarse_bins(tmp_path: Path) -> None:
    job, nc = _node(tmp_path, 1, dp={"epsilon": 1.0, "delta": 1e-6, "clip": 1.0, "unit": "record"})
    answers = [_evaluate(job, nc, str(run)) for run in range(12)]  # each run charged, answered once
    for pos, neg in answers:
        assert len(pos) == len(neg) == holdout_dp.BINS
    flat = np.array([np.concatenate(a) for a in answers], dtype=float)
    assert not np.array_equal(flat[0], flat[1]) and not np.array_equal(flat[1], flat[2])  # fresh noise per run
    # the spread around the per-bin mean, corrected for the 12 draws: the calibrated sd at ε = 1 is
    # 4.53 x √2 = 6.4 counts (rounding adds 1/12); half the noise would fail this
    spread = np.std(flat - flat.mean(axis=0)) * math.sqrt(12 / 11)
    assert spread == pytest.approx(holdout_dp.noise_multiplier(1.0, 1e-6) * math.sqrt(2), rel=0.15)


@pytest.mark.parametrize("epsilon", [1.0, 4.0])
def test_with_record_dp_the_readout_succeeds_no_more_often_than_epsilon_allows(tmp_path: Path, epsilon: float) -> None:
    """The optimal test for the two worlds (victim positive or negative, every other held-out count
    known to the attacker): guess positive when the victim's noisy bin has more positives than the
    others put there. Bound: e^ε / (1 + e^ε) (plus δ = 1e-6)."""
    worlds = []
    for label in (0, 1):
        job, nc = _node(
            tmp_path / str(label), label, dp={"epsilon": epsilon, "delta": 1e-6, "clip": 1.0, "unit": "record"}
        )
        client = HorizontalClient(job, nc, 1_000_000, ledger_check=False, run_id="sim")
        data = client.data({})
        scores = 1 / (1 + np.exp(-(data.x_test[:, 0] * CRAFTED[0] + CRAFTED[1])))
        worlds.append(node.score_histograms(scores, data.y_test))
    top = _victims_bin(holdout_dp.BINS)
    others = holdout_dp.coarsened(worlds[0][0])[top], holdout_dp.coarsened(worlds[0][1])[top] - 1
    multiplier = holdout_dp.noise_multiplier(epsilon, 1e-6)
    rng = np.random.default_rng(11)
    trials, right = 4000, 0
    for label, (pos, neg) in enumerate(worlds):
        for _ in range(trials):
            noisy_pos, noisy_neg = holdout_dp.release(pos, neg, multiplier, rng)
            guess = int((noisy_pos[top] - others[0]) - (noisy_neg[top] - others[1]) > 0)
            right += guess == label
    rate = right / (2 * trials)
    bound = math.exp(epsilon) / (1 + math.exp(epsilon))
    se = math.sqrt(bound * (1 - bound) / (2 * trials))
    assert rate <= bound + 1e-6 + 3 * se, (rate, bound)
    # The attack is real, not a coin: it does better than chance, as the Gaussian mechanism says
    # (Φ(1 / (2 x multiplier)): 0.544 at ε = 1, 0.654 at ε = 4).
    expected = NormalDist().cdf(1 / (2 * multiplier))
    assert abs(rate - expected) < 4 * math.sqrt(0.25 / (2 * trials)), (rate, expected)


@pytest.mark.parametrize("dp", [None, {"epsilon": 1.0, "delta": 1e-6, "clip": 1.0, "unit": "record"}])
def test_the_loss_and_row_count_leave_a_record_dp_node_only_as_fixed_values(
    tmp_path: Path, dp: dict[str, object] | None
) -> None:
    """The evaluation's loss and example count come with the histograms. Exact, the crafted
    weights' loss differs with the victim's label (positive control, no DP); a record-DP node sends
    0.0 and 1 (the coordinator estimates the loss from the noisy histograms)."""
    answers = []
    for label in (0, 1):
        job, nc = _node(tmp_path / str(label), label, dp=dp)
        client = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="1")
        loss, examples, _ = client.evaluate([CRAFTED], {"server_round": job.rounds})
        answers.append((loss, examples))
    if dp is None:
        assert answers[0][0] != answers[1][0] and answers[0][1] == answers[1][1] == 100
    else:
        assert answers == [(0.0, 1), (0.0, 1)]


@pytest.mark.parametrize("victim_age", [0, 119])
def test_weights_that_would_fail_on_some_rows_are_refused_before_any_row_is_used(
    tmp_path: Path, victim_age: int
) -> None:
    """w = [inf, 0] made a row with the feature at exactly 0 score NaN and crash the histogram: an
    error for a victim aged 0, an answer for one aged 119. Non-finite or mis-sized weights are now
    refused the same way whatever the rows hold, before the run's one evaluation is claimed."""
    job, nc = _node(tmp_path, 1, dp={"epsilon": 1.0, "delta": 1e-6, "clip": 1.0, "unit": "record"})
    if victim_age == 0:
        store = nc.store
        rows = datasets.read_matrix(store, ["civil.age", "tax.label"])
        assert rows[0][0] == VICTIM
        cols = {
            "civil.age": datasets.Column(np.concatenate([[0], rows[1][1:, 0]]).astype(int), "int", 0, 120),
            "tax.label": datasets.Column(rows[1][:, 1].astype(int), "flag", 0, 1),
        }
        store.unlink()
        datasets.write_store(store, "synth", rows[0], cols)
    client = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id="1")
    bad = ([np.array([np.inf, 0.0])], [np.array([np.nan, 1.0])], [np.zeros(3)], [], [np.array(["a", "b"])],
           [np.array([1 + 1j, 0])], [np.zeros((2, 1))])  # fmt: skip
    for weights in bad:
        with pytest.raises(InvalidInput, match="the weights must be 2 finite numbers"):
            client.evaluate(weights, {"server_round": job.rounds})  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="fit: the weights must be 2 finite numbers"):
            client.fit(weights, {"server_round": 1})  # type: ignore[arg-type]
    # huge but finite weights overflow on some rows: binned, not raised
    answer = client.evaluate([np.array([1e308, 1e308])], {"server_round": job.rounds})[2]
    assert len(json.loads(answer["hist_pos"])) == holdout_dp.BINS
