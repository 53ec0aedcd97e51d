"""bench/report.py renders the record-level DP / vertical / label-inference subsection of
docs/BENCHMARKS.md from bench/results/federated.json: the committed document is what the
committed results render to, so the next `make bench` cannot drop or contradict it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from bench import report

ROOT = Path(__file__).resolve().parents[2]


def _results() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "bench" / "results" / "federated.json").read_text())
    return data


def test_rendering_the_current_results_reproduces_the_section() -> None:
    section = report.record_dp(_results())
    doc = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    assert section.startswith("### Record-level DP, vertical, label inference")
    assert section in doc
    assert report.federated(_results()) in doc  # the table and the subsection, in place
    # The figures come from the JSON: the ε = 1 AUC and the last region's noise multiplier, as recorded.
    r = _results()["record_dp"]
    eps1 = r["horizontal_secagg_dpsgd_eps1"]
    assert f"| horizontal SecAgg+ record-level DP ε = 1 | {eps1['auc']:.4f} |" in section
    assert f"region3 σ={eps1['nodes']['region3']['dp_sigma']:.3f}" in section


def test_vertical_dp_runs_render_when_present() -> None:
    d = copy.deepcopy(_results())
    r = d["record_dp"]
    r["vertical"].update(nodes=6, alignment="psi", wire="float32")
    r["vertical_job"] = {"rounds": 6, "learning_rate": 3.0, "clip": 1.0, "delta": 1e-6}
    for i, e in enumerate(("1", "4", "8")):
        r[f"vertical_dp_eps{e}"] = {
            "auc": 0.8 + i / 100,
            "epsilon": float(e) * 0.999,
            "wall_s": 100.0 + i,
            "bytes": 1000 + i,
            "nodes": {
                "civil": {"dp_epsilon": float(e) * 0.999, "dp_sigma": 9.0 - i, "dp_sample_rate": 1.0, "dp_steps": 13}
            },
        }
    section = report.record_dp(d)
    assert "| vertical record-level DP ε = 4 | 0.8100 |" in section
    assert "Vertical ε = 8: per-feature-node noise multipliers civil σ=7.000 (13 releases, ε=7.9920)" in section
    assert "Vertical at ε = 1 / 4 / 8: 0.8000 / 0.8100 / 0.8200" in section
    assert "before PSI alignment" not in section and "6 agency nodes" in section


def test_the_stacked_runs_verdicts_follow_the_figures() -> None:
    """The goal sentence reads the AUCs: moved below the goals, it says they are missed."""
    d = copy.deepcopy(_results())
    r = d["record_dp"]
    same = r["vertical_dp_pooled_same_rows"]["auc"]
    assert "ε = 1 is within 0.02" in report.record_dp(d) and "ε = 4 is within 0.01" in report.record_dp(d)
    r["vertical_stacked_dp_eps1"]["auc"] = same - 0.021
    r["vertical_stacked_dp_eps4"]["auc"] = same - 0.011
    section = report.record_dp(d)
    assert "| vertical stacked, record-level DP ε = 1 |" in section
    stacked = next(line for line in section.splitlines() if line.startswith("* Vertical stacked"))
    assert "ε = 1 misses 0.02 (-0.0210)" in stacked and "ε = 4 misses 0.01 (-0.0110)" in stacked


def test_the_full_data_vertical_section_renders_from_its_own_results() -> None:
    d = json.loads((ROOT / "bench" / "results" / "federated_full_vertical_dp.json").read_text())
    section = report.federated_full_vertical_dp(d)
    assert section in (ROOT / "docs" / "BENCHMARKS.md").read_text()
    assert f"δ = {d['record_dp']['vertical_job']['delta']:g}" in section
    stacked4 = d["record_dp"]["vertical_stacked_dp_eps4"]["auc"]
    assert f"| vertical stacked, record-level DP ε = 4 | {stacked4:.4f} |" in section
