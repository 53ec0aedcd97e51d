"""Vertical split learning over real SuperLink/SuperNode processes: three agencies, partially
overlapping populations, label at the tax node, record-level DP at the feature nodes and label DP at
the label holder.

One job checks the protocol (alignment, rounds, the split model) and the DP accounting together:
the DP path runs every step of the plain one, with noise added at the nodes (federated/vertical_dp.py
is unit-tested for the plain/noisy difference), and a Flower job costs about a minute of the suite.
Both jobs run on one long-lived local link (federated/local_link.py, as the gateway runs them), so
the file starts Flower's processes once; each test reads its own job's charges."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated import datasets
from federated.admission import LedgerAdmission, dp_release
from federated.jobs import parse_job
from federated.local_link import LocalLink, LocalTraining
from federated.runner import NodeSpec, run_job
from tests.integration.test_fed_horizontal import assert_no_orphans
from xgate.logging import FORBIDDEN_KEYS

# Minutes of Flower processes; on a loaded 2-core CI box a job has taken over 300 s (the default).
pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=120), pytest.mark.timeout(900)]
SPLIT = {
    "civil": ["civil.age", "civil.disabled", "civil.region"],
    "tax": ["tax.income", "tax.label"],
    "hrss": ["hrss.months"],
}

# A record-level DP job over the three agencies below, ε = 4 at each feature node.
DP_JOB: dict[str, Any] = {
    "purpose": "fraud-model",
    "mode": "vertical",
    "features": ["civil.age", "civil.disabled", "civil.region", "tax.income", "hrss.months"],
    "label": "tax.label",
    "label_holder": "tax",
    "min_nodes": 3,
    "dp": {"epsilon": 4.0, "delta": 1e-6, "clip": 1.0, "unit": "record"},
    "round_timeout_s": 120,
    "job_timeout_s": 600,
}


def make_vertical_nodes(tmp_path: Path, cap: float = 1.0) -> list[NodeSpec]:
    """Three agencies over 1200 synthetic subjects, 1000 of them held by all three; ε cap `cap` each."""
    subj, cols, _ = datasets.synthetic_population(1200, seed=7)
    # Each agency knows a different (overlapping) part of the population: 1000 subjects in common.
    windows = {"civil": (0, 1100), "tax": (100, 1200), "hrss": (50, 1150)}
    nodes = []
    for agency, els in SPLIT.items():
        lo, hi = windows[agency]
        store = tmp_path / agency / "store.sqlite"
        datasets.write_store(
            store,
            f"synth_{agency}",
            subj[lo:hi],
            {e: datasets.Column(cols[e].values[lo:hi], cols[e].type, cols[e].min, cols[e].max) for e in els},
        )
        spec = NodeSpec(agency, store, tmp_path / agency / "ledger.sqlite")
        LedgerAdmission(spec.ledger, spec.store).configure(["fraud-model"], {f"synth_{agency}": cap})
        nodes.append(spec)
    return nodes


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[NodeSpec], LocalLink]]:
    """The three agencies (ε cap 16 each: the three jobs fit) and one link to their SuperNodes; when
    the module ends every process it started is gone."""
    root = tmp_path_factory.mktemp("vertical")
    nodes = make_vertical_nodes(root, cap=16.0)
    training = LocalTraining(state_dir=root / "link", nodes=nodes)
    link = training.link()
    try:
        yield nodes, link
    finally:
        training.close()
        assert_no_orphans(link.fed)


def _spent(nodes: list[NodeSpec]) -> dict[str, float]:
    return {n.agency: LedgerAdmission(n.ledger, n.store).spent(f"synth_{n.agency}") for n in nodes}


def test_vertical_end_to_end_with_record_dp(tmp_path: Path, shared: tuple[list[NodeSpec], LocalLink]) -> None:
    nodes, link = shared
    job = parse_job({**DP_JOB, "job_id": "it-vertical-dp", "rounds": 2, "label_dp": 2.0})
    events: list[dict[str, Any]] = []
    before = _spent(nodes)
    res = run_job(job, nodes, job_dir=tmp_path / "job", on_event=events.append, local=link)
    assert res.status == "completed"

    # The protocol: aligned on the 1000 subjects all three hold, two rounds, the model stays split.
    aligned = next(e for e in events if e["event"] == "aligned")
    assert aligned["subjects"] == 1000 and sorted(aligned["nodes"]) == ["civil", "hrss", "tax"]
    assert aligned["keys_checked"] is True  # every node verified the PSI agreement keys it used against the CA
    assert [e["round"] for e in events if e["event"] == "round_completed"] == [1, 2]
    # Learns something under DP. Over 800 runs of this job (its ServerApp and ClientApp code driven
    # in one process, fresh DP noise and label-DP keys each time): AUC 0.748 +- 0.039, 5 sd above.
    assert res.evaluation["n"] > 100 and res.evaluation["auc"] > 0.55
    assert res.evaluation["top_deattenuated"] is True  # scored with weights undoing the noise's dilution
    assert res.evaluation["top_recentred"] is True  # and a bias that puts scores on both sides of the threshold
    # Better than chance. Estimated from ~200 held-out rows under label DP, it spreads: 0.674 +- 0.038
    # over those runs, so a bound of 0.55 failed about 1 run in 1,700; 0.5 is 4.6 sd below.
    assert res.evaluation["balanced_accuracy"] > 0.5
    summary = json.loads((tmp_path / "job" / "server-summary.json").read_text())
    assert set(summary["model_parts"]) == {"civil", "hrss", "top@tax"}
    # Each node keeps its own part in its local cache; the server has digests only.
    for n in nodes:
        assert (n.ledger.parent / "fl-cache" / job.job_id / "params.npz").exists()
    with np.load(tmp_path / "job" / "model.npz") as m:
        assert list(m.files) == ["parts"]
    for e in events:
        assert not (FORBIDDEN_KEYS - {"subjects"}) & set(e)  # `aligned {subjects}`: the aligned count

    # The DP accounting: each feature node calibrated to its own rows and wrote it in its own books
    # before its first release; the job's summary carries what the nodes recorded.
    dp = summary["dp"]
    assert dp["unit"] == "record" and set(dp["nodes"]) == {"civil", "hrss"}  # the feature nodes
    after = _spent(nodes)
    for spec in nodes:
        recorded = dp_release(spec.ledger, job.job_id)
        spent = after[spec.agency] - before[spec.agency]
        # The label holder also pays for its noisy-label release (label_dp = 2), once per (label, ε).
        assert spent == pytest.approx(6.0 if spec.agency == "tax" else 4.0)
        if spec.agency == "tax":
            assert recorded is None  # the label holder releases gradients (label DP), not embeddings
            continue
        assert recorded is not None and 3.9 < recorded["epsilon"] <= 4.0
        reported = dp["nodes"][spec.agency]
        assert reported["dp_epsilon"] == pytest.approx(recorded["epsilon"])
        assert reported["dp_sigma"] == pytest.approx(recorded["noise_multiplier"])
        assert reported["dp_steps"] == recorded["steps"] == 5  # full batches, 2 steps: 2 x 2 + 1 releases
    spent = next(e for e in events if e["event"] == "dp_spent")
    assert spent["unit"] == "record" and spent["epsilon"] <= 4.0
    assert res.epsilon is not None and res.epsilon <= 4.0
    assert summary["label_dp"]["epsilon"] == 2.0


def test_vertical_record_dp_with_a_calibrated_top(tmp_path: Path, shared: tuple[list[NodeSpec], LocalLink]) -> None:
    """`top_calibration`: the label holder fits its top on about half of the held-out rows' clean
    embeddings and counts only the others; the feature nodes' DP releases and their accounting are
    those of any record-DP job."""
    nodes, link = shared
    job = parse_job({**DP_JOB, "job_id": "vjob-calibrated", "rounds": 1, "top_calibration": 0.5})
    res = run_job(job, nodes, job_dir=tmp_path / "job", local=link)
    assert res.status == "completed"
    ev = res.evaluation
    assert ev["top_calibrated"] is True
    assert ev["top_deattenuated"] is False and ev["top_recentred"] is False
    # The evaluation never counts a row the top was fitted on, and every held-out row is one or the other.
    assert ev["n"] + ev["calibration_rows"] == ev["held_out_rows"] > 100
    assert 0.35 < ev["calibration_rows"] / ev["held_out_rows"] < 0.65
    assert ev["auc"] > 0.55  # better than chance under DP
    for spec in nodes:
        recorded = dp_release(spec.ledger, job.job_id)
        if spec.agency == "tax":
            assert recorded is None  # the label holder adds no noise and releases no embeddings
        else:  # one step: the embedding, the update and the preconditioner
            assert recorded is not None and recorded["steps"] == 3 and 3.9 < recorded["epsilon"] <= 4.0


def test_a_stacked_record_dp_job_over_flower(tmp_path: Path, shared: tuple[list[NodeSpec], LocalLink]) -> None:
    """`vertical_scheme = "stacked"`: one exchange of sealed labels and held-out scores; each feature
    node's part trained by DP-SGD and accounted in its ledger, the top fitted on half the held-out rows."""
    nodes, link = shared
    body = {k: v for k, v in DP_JOB.items() if k != "dp"}
    job = parse_job(
        {**body, "job_id": "vjob-stacked", "rounds": 1, "vertical_scheme": "stacked", "top_calibration": 0.5,
         "batch_size": 64, "dp": {"epsilon": 4.0, "delta": 1e-6, "unit": "record"}}
    )  # fmt: skip
    res = run_job(job, nodes, job_dir=tmp_path / "job", local=link)
    assert res.status == "completed"
    ev = res.evaluation
    assert ev["top_calibrated"] is True and ev["n"] + ev["calibration_rows"] == ev["held_out_rows"] > 100
    assert ev["auc"] > 0.55
    events = [json.loads(line)["event"] for line in (tmp_path / "job" / "events.jsonl").read_text().splitlines()]
    assert events.count("round_completed") == 1
    summary = json.loads((tmp_path / "job" / "server-summary.json").read_text())
    assert set(summary["dp"]["nodes"]) == {"civil", "hrss"}
    for spec in nodes:
        recorded = dp_release(spec.ledger, job.job_id)
        if spec.agency == "tax":
            assert recorded is None  # the label holder's part never leaves it
        else:  # DP-SGD: 5 epochs of Poisson-sampled batches of 64
            assert recorded is not None and recorded["sample_rate"] < 0.1 and recorded["steps"] > 50
            assert 3.9 < recorded["epsilon"] <= 4.0
