"""The record-DP holdout release (federated/holdout_dp.py) and how the coordinator reads it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, Status, ndarrays_to_parameters

from federated import dp_sgd, holdout_dp, node
from federated.horizontal_server import JobFailed, XgateFedAvg
from federated.jobs import JobSpec, parse_job


def _job(**dp: Any) -> JobSpec:
    return parse_job(
        {
            "job_id": "h-eval", "purpose": "fraud-model", "mode": "horizontal", "features": ["civil.age"],
            "label": "tax.label", "label_holder": "tax", "rounds": 3, "secagg": False, "min_nodes": 1,
            **({"dp": dp} if dp else {}),
        }
    )  # fmt: skip


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0, 8.0])
def test_the_noise_multiplier_is_the_smallest_within_epsilon(epsilon: float) -> None:
    z = holdout_dp.noise_multiplier(epsilon, 1e-6)
    assert dp_sgd.accountant_epsilon(0.0, 1.0, 0, 1e-6, stats_sigma=z) <= epsilon
    assert dp_sgd.accountant_epsilon(0.0, 1.0, 0, 1e-6, stats_sigma=z / 1.002) > epsilon


@pytest.mark.parametrize(("epsilon", "delta"), [(0.0, 1e-6), (-1.0, 1e-6), (1.0, 0.0), (1.0, 1.0)])
def test_the_noise_multiplier_refuses_meaningless_budgets(epsilon: float, delta: float) -> None:
    with pytest.raises(ValueError, match="epsilon > 0 and 0 < delta < 1"):
        holdout_dp.noise_multiplier(epsilon, delta)


def test_coarsening_keeps_every_count_and_refuses_uneven_bins() -> None:
    h = np.random.default_rng(0).integers(0, 5, node.HIST_BINS)
    c = holdout_dp.coarsened(h)
    assert len(c) == holdout_dp.BINS and c.sum() == h.sum() and c[0] == h[: node.HIST_BINS // holdout_dp.BINS].sum()
    with pytest.raises(ValueError, match="does not coarsen"):
        holdout_dp.coarsened(np.zeros(100))


def test_the_release_is_rounded_calibrated_noise_from_os_entropy() -> None:
    pos = np.zeros(node.HIST_BINS, dtype=np.int64)
    neg = np.zeros(node.HIST_BINS, dtype=np.int64)
    pos[2000], neg[100] = 7, 9
    z = holdout_dp.noise_multiplier(1.0, 1e-6)
    draws = [np.concatenate(holdout_dp.release(pos, neg, z)) for _ in range(400)]
    assert all(d.dtype == np.int64 and len(d) == 2 * holdout_dp.BINS for d in draws)
    assert not np.array_equal(draws[0], draws[1])  # no fixed seed
    sd = np.std(np.array(draws, dtype=float) - np.mean(draws, axis=0))
    assert sd == pytest.approx(z * np.sqrt(2), rel=0.05)  # 6.4 counts at ε = 1
    mean = np.mean(draws, axis=0)
    assert mean[40] == pytest.approx(7, abs=1.5) and mean[holdout_dp.BINS + 2] == pytest.approx(9, abs=1.5)


class _OneNode:
    """The client manager's two calls FedAvg makes, with one node available."""

    def num_available(self) -> int:
        return 1

    def sample(self, num_clients: int, min_num_clients: int | None = None) -> list[Any]:
        return [SimpleNamespace(node_id=1)]


def test_a_record_dp_coordinator_asks_for_one_evaluation_after_the_last_round(tmp_path: Path) -> None:
    weights = ndarrays_to_parameters([np.zeros(2)])
    strat = XgateFedAvg(_job(epsilon=1.0, delta=1e-6, clip=1.0, unit="record"), tmp_path, lambda e: None, 100)
    asked = [len(strat.configure_evaluate(r, weights, _OneNode())) for r in (1, 2, 3)]  # type: ignore[arg-type]
    assert asked == [0, 0, 1]
    plain = XgateFedAvg(_job(), tmp_path, lambda e: None, 100)
    assert [len(plain.configure_evaluate(r, weights, _OneNode())) for r in (1, 2, 3)] == [1, 1, 1]  # type: ignore[arg-type]


def _evaluated(pos: list[int], neg: list[int], agency: str) -> tuple[Any, EvaluateRes]:
    metrics = {"agency": agency, "hist_pos": json.dumps(pos), "hist_neg": json.dumps(neg)}
    return SimpleNamespace(node_id=hash(agency)), EvaluateRes(Status(Code.OK, ""), 0.5, 10, metrics)


def test_noisy_histograms_are_summed_as_they_are_and_mismatched_bins_fail_the_job(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    strat = XgateFedAvg(_job(epsilon=1.0, delta=1e-6, clip=1.0, unit="record"), tmp_path, events.append, 100)
    strat.released = [np.zeros(2)]
    bins = holdout_dp.BINS
    pos_a, neg_a = [0] * bins, [0] * bins
    pos_a[40], neg_a[10], neg_a[45] = 30, 25, -4  # a noisy count below zero
    pos_b, neg_b = [0] * bins, [0] * bins
    pos_b[41], neg_b[12], pos_b[3] = 20, 30, -2
    strat.aggregate_evaluate(3, [_evaluated(pos_a, neg_a, "a"), _evaluated(pos_b, neg_b, "b")], [])
    row = strat.final_eval
    pos, neg = np.add(pos_a, pos_b), np.add(neg_a, neg_b)
    raw = float((pos * (np.concatenate([[0], np.cumsum(neg)[:-1]]) + neg / 2)).sum() / (pos.sum() * neg.sum()))
    assert raw > 1 and row["auc"] == 1.0  # the unclipped counts' estimate, clamped into [0, 1]
    assert min(row["confusion_matrix"].values()) >= 0
    # the nodes' fixed losses (0.0) are not used: the loss is estimated from the histograms
    assert row["loss"] == pytest.approx(node.histogram_loss(pos, neg)) and row["loss"] >= 0
    with pytest.raises(JobFailed, match="differ in their number of bins"):
        strat.aggregate_evaluate(
            3, [_evaluated(pos_a, neg_a, "a"), _evaluated([0] * node.HIST_BINS, [0] * node.HIST_BINS, "b")], []
        )


def test_the_report_clips_noisy_confusion_totals_at_zero() -> None:
    pos = np.zeros(holdout_dp.BINS, dtype=np.int64)
    neg = np.zeros(holdout_dp.BINS, dtype=np.int64)
    pos[40], pos[2], neg[5] = 12, -5, 20
    rep = node.histogram_report(pos, neg, threshold=0.5)
    assert rep["confusion_matrix"] == {"tp": 12, "fp": 0, "tn": 20, "fn": 0}


def test_the_histogram_loss_is_the_log_loss_at_the_bin_centres() -> None:
    pos = np.zeros(holdout_dp.BINS)
    neg = np.zeros(holdout_dp.BINS)
    pos[47], neg[0] = 3, 1  # confident and right: logits +11.75 and -11.75
    assert node.histogram_loss(pos, neg) == pytest.approx(np.log1p(np.exp(-11.75)))
    pos[:] = 0
    pos[0] = 1  # confident and wrong
    assert node.histogram_loss(pos, np.zeros(holdout_dp.BINS)) == pytest.approx(11.75, abs=1e-4)
    assert np.isnan(node.histogram_loss(np.zeros(4), np.zeros(4)))


def test_a_noisy_auc_stays_within_zero_and_one_or_is_nan() -> None:
    pos = np.zeros(holdout_dp.BINS, dtype=np.int64)
    neg = np.zeros(holdout_dp.BINS, dtype=np.int64)
    pos[40], pos[2], neg[5], neg[44] = 3, -2, 4, -3  # few positives, noise larger than the counts
    assert 0.0 <= node.histogram_report(pos, neg, 0.5)["auc"] <= 1.0
    pos[40] = 1  # the noisy positives sum below zero
    assert np.isnan(node.histogram_report(pos, neg, 0.5)["auc"])


def test_a_node_without_held_out_rows_leaves_the_loss_a_number(tmp_path: Path) -> None:
    """A small node the hash rule gave no held-out row answers loss 0 over 0 examples: the job's
    loss is the other nodes' (review: its bce over no rows was NaN, and the whole job's loss with
    it, written to report.json as a bare NaN); with no held-out row anywhere the job fails."""
    strat = XgateFedAvg(_job(), tmp_path, lambda e: None, 100)
    strat.released = [np.zeros(2)]
    bins = node.HIST_BINS
    pos, neg = [0] * bins, [0] * bins
    pos[30], neg[10] = 6, 4

    def answer(agency: str, loss: float, examples: int) -> tuple[Any, EvaluateRes]:
        metrics = {"agency": agency, "hist_pos": json.dumps(pos), "hist_neg": json.dumps(neg)}
        return SimpleNamespace(node_id=hash(agency)), EvaluateRes(Status(Code.OK, ""), loss, examples, metrics)

    strat.aggregate_evaluate(3, [answer("a", 0.4, 10), answer("small", 0.0, 0)], [])
    assert strat.final_eval["loss"] == pytest.approx(0.4)
    with pytest.raises(JobFailed, match="no node holds a held-out row"):
        strat.aggregate_evaluate(3, [answer("small", 0.0, 0)], [])
