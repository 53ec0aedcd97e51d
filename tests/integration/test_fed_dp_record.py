"""Record-level DP (DP-SGD at each node) in a horizontal SecAgg+ job over real Flower processes:
each node calibrates its noise to its own dataset, records its accountant's epsilon in its own
ledger before training, and the job's summary carries every node's accounting. The job
standardises a feature: its statistics round is a noisy release the same accountant covers; its
holdout evaluation is a noisy release of its own (federated/holdout_dp.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from federated import dp_sgd, holdout_dp
from federated.admission import LedgerAdmission, dp_release
from federated.jobs import parse_job
from federated.runner import Federation, run_job
from tests.integration.test_fed_horizontal import FEATS, assert_no_orphans, make_nodes

# Minutes of Flower processes; on a loaded 2-core CI box a job has taken over 300 s (the default).
pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=55), pytest.mark.timeout(900)]


def test_record_level_dp_horizontal_secagg(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, [3000, 4500])  # enough holdout rows that its noisy histograms still rank
    dp = {"epsilon": 2.0, "delta": 1e-6, "clip": 1.0, "unit": "record"}
    job = parse_job(
        {
            "job_id": "it-dp-record",
            "purpose": "fraud-model",
            "mode": "horizontal",
            "features": FEATS,
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 1,
            "secagg": True,
            "min_nodes": 2,
            "batch_size": 64,
            "learning_rate": 2.0,
            "encodings": {"civil.age": "standardise"},
            "dp": dp,
            "round_timeout_s": 120,
            "job_timeout_s": 400,
        }
    )
    events: list[dict[str, Any]] = []
    feds: list[Federation] = []
    res = run_job(job, nodes, job_dir=tmp_path / "job", on_event=events.append, on_started=feds.append)
    assert res.status == "completed"
    assert_no_orphans(feds[0])
    summary = json.loads((tmp_path / "job" / "server-summary.json").read_text())["dp"]
    assert summary["unit"] == "record" and set(summary["nodes"]) == {"region0", "region1"}
    for spec in nodes:
        recorded = dp_release(spec.ledger, job.job_id)  # each node's own books
        assert recorded is not None and 1.5 < recorded["epsilon"] <= 2.0
        reported = summary["nodes"][spec.agency]
        assert reported["dp_epsilon"] == pytest.approx(recorded["epsilon"])
        assert reported["dp_sigma"] == pytest.approx(recorded["noise_multiplier"])
        assert reported["dp_stats_sigma"] == dp_sgd.STATS_NOISE_MULTIPLIER  # the statistics round, accounted
        # The holdout histograms: one noisy release per run, calibrated to the job's ε by the node.
        assert reported["dp_holdout_sigma"] == pytest.approx(holdout_dp.noise_multiplier(2.0, 1e-6))
        assert LedgerAdmission(spec.ledger, spec.store).spent(f"synth_r{spec.agency[-1]}") == pytest.approx(2.0)
    # The smaller node samples a larger share of its rows per step, so it needs more noise.
    assert summary["nodes"]["region0"]["dp_sample_rate"] > summary["nodes"]["region1"]["dp_sample_rate"]
    spent = next(e for e in events if e["event"] == "dp_spent")
    assert spent["unit"] == "record" and spent["epsilon"] <= 2.0
    assert res.epsilon is not None and res.epsilon <= 2.0
    assert res.evaluation["auc"] > 0.55
    # Evidence that secure aggregation ran, from SecAgg+'s own state (one round: a Flower round is
    # about a minute of the suite; the accounting over several rounds is unit-tested).
    (stats_round,) = [e for e in events if e["event"] == "secagg_round" and e["phase"] == "statistics"]
    assert stats_round["unmasked"] and stats_round["masked_vectors"] == 2
    # The pooled statistics came from noisy moments: near one table's, not equal to them.
    meta = json.loads((tmp_path / "job" / "model.json").read_text())
    mean, sd = meta["standardisation"]["civil.age"]["mean"], meta["standardisation"]["civil.age"]["sd"]
    assert 18 <= mean <= 90 and sd > 0
    secagg = [e for e in events if e["event"] == "secagg_round" and e["phase"] != "statistics"]
    assert [e["round"] for e in secagg] == [1]
    for e in secagg:
        assert e["unmasked"] and e["sampled"] == e["masked_vectors"] == e["share_holders"] == 2
        assert e["shares"] == 2 and e["threshold"] == 2
