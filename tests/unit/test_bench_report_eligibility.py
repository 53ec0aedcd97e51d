"""bench/report.py renders the eligibility section of docs/BENCHMARKS.md from
bench/results/eligibility.json, including what requester signatures cost: the committed document is
what the committed results render to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report

ROOT = Path(__file__).resolve().parents[2]


def _results() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "bench" / "results" / "eligibility.json").read_text())
    return data


def test_the_eligibility_section_is_what_the_results_render_to() -> None:
    assert report.eligibility(_results()) in (ROOT / "docs" / "BENCHMARKS.md").read_text()


def test_the_requester_signature_cost_is_measured_per_batch_and_rendered() -> None:
    results = _results()
    costs = {b["applicants"]: b["requester_statement"] for b in results["batches"]}
    assert set(costs) == {1, 100, 4096, 10_000}
    for applicants, cost in costs.items():
        assert cost["sign_ms"] > 0 and cost["verify_ms"] > 0, applicants
        assert 0 < cost["share_of_he_check"] < 0.05, (applicants, cost)  # a few percent at most
    rendered = report.eligibility(results)
    assert "Requester-signed checks" in rendered and f"{costs[10_000]['verify_ms']:g} ms" in rendered
