"""Record-level DP in a vertical job over real SuperLink/SuperNode processes: each feature node
calibrates its noise to its own aligned rows, records its accountant's epsilon in its own ledger
before its first release, and the job's summary carries every feature node's accounting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from federated.admission import LedgerAdmission, dp_release
from federated.jobs import parse_job
from federated.runner import Federation, run_job
from tests.integration.test_fed_horizontal import assert_no_orphans
from tests.integration.test_fed_vertical import make_vertical_nodes

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)  # three agencies on a shared 2-core machine
def test_vertical_record_dp_end_to_end(tmp_path: Path) -> None:
    nodes = make_vertical_nodes(tmp_path, cap=5.0)
    job = parse_job(
        {
            "job_id": "it-vertical-dp",
            "purpose": "fraud-model",
            "mode": "vertical",
            "features": ["civil.age", "civil.disabled", "civil.region", "tax.income", "hrss.months"],
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 2,
            "min_nodes": 3,
            "dp": {"epsilon": 4.0, "delta": 1e-6, "clip": 1.0, "unit": "record"},
            "label_dp": 2.0,
            "round_timeout_s": 120,
            "job_timeout_s": 400,
        }
    )
    events: list[dict[str, Any]] = []
    feds: list[Federation] = []
    res = run_job(job, nodes, job_dir=tmp_path / "job", on_event=events.append, on_started=feds.append)
    assert res.status == "completed"
    assert_no_orphans(feds[0])
    summary = json.loads((tmp_path / "job" / "server-summary.json").read_text())
    dp = summary["dp"]
    assert dp["unit"] == "record" and set(dp["nodes"]) == {"civil", "hrss"}  # the feature nodes
    for spec in nodes:
        recorded = dp_release(spec.ledger, job.job_id)  # each node's own books
        assert LedgerAdmission(spec.ledger, spec.store).spent(f"synth_{spec.agency}") == pytest.approx(4.0)
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
    assert res.evaluation["n"] > 100 and 0.0 <= res.evaluation["auc"] <= 1.0
