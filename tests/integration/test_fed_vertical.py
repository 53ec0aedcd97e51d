"""Vertical split learning over real SuperLink/SuperNode processes: three agencies, partially
overlapping populations, label at the tax node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated import datasets
from federated.admission import LedgerAdmission
from federated.jobs import parse_job
from federated.runner import Federation, NodeSpec, run_job
from tests.integration.test_fed_horizontal import assert_no_orphans
from xgate.logging import FORBIDDEN_KEYS

pytestmark = pytest.mark.integration
SPLIT = {
    "civil": ["civil.age", "civil.disabled", "civil.region"],
    "tax": ["tax.income", "tax.label"],
    "hrss": ["hrss.months"],
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


def test_vertical_end_to_end(tmp_path: Path) -> None:
    nodes = make_vertical_nodes(tmp_path)
    job = parse_job(
        {
            "job_id": "it-vertical",
            "purpose": "fraud-model",
            "mode": "vertical",
            "features": ["civil.age", "civil.disabled", "civil.region", "tax.income", "hrss.months"],
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 2,
            "min_nodes": 3,
            "round_timeout_s": 120,
            "job_timeout_s": 400,
        }
    )
    events: list[dict[str, Any]] = []
    feds: list[Federation] = []
    res = run_job(job, nodes, job_dir=tmp_path / "job", on_event=events.append, on_started=feds.append)
    assert res.status == "completed"
    assert_no_orphans(feds[0])
    aligned = next(e for e in events if e["event"] == "aligned")
    assert aligned["subjects"] == 1000 and sorted(aligned["nodes"]) == ["civil", "hrss", "tax"]
    assert [e["round"] for e in events if e["event"] == "round_completed"] == [1, 2]
    ev = res.evaluation
    assert ev["n"] > 100 and ev["auc"] > 0.55  # learns something in two exchanges
    summary = json.loads((tmp_path / "job" / "server-summary.json").read_text())
    assert set(summary["model_parts"]) == {"civil", "hrss", "top@tax"}
    # The model stays split: each node keeps its own part in its local cache; the server has digests only.
    for n in nodes:
        assert (n.ledger.parent / "fl-cache" / job.job_id / "params.npz").exists()
    with np.load(tmp_path / "job" / "model.npz") as m:
        assert list(m.files) == ["parts"]
    for e in events:
        assert not FORBIDDEN_KEYS & set(e)
