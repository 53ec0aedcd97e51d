"""`xgate check --json` prints the counts in every view; rows only where the view has them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client.cli import result_json
from client.sdk import CheckResult
from xgate.errors import InvalidInput

PRIVACY = {"epsilon_per_criterion": 1.0, "flip_probability": 0.25, "epsilon_per_query": 2.0, "period_spent": 4.0}


def _result(view: str) -> CheckResult:
    criteria = ["income_within_threshold", "alive_and_resident"]
    passes = {"income_within_threshold": np.array([True, False, True]), "alive_and_resident": np.array([True] * 3)}
    privacy = PRIVACY if view == "cohort" else {}
    return CheckResult("req-1", "dibao", "2026.1", view, ["a", "b", "c"], criteria, {}, passes, privacy=privacy)


def test_bronze_json_has_the_noisy_counts_their_estimates_and_the_epsilon_and_no_rows() -> None:
    result = _result("cohort")
    with pytest.raises(InvalidInput, match="no per-subject results"):
        result.rows()  # what --json used to call, after the check was answered and charged
    out = json.loads(json.dumps(result_json(result)))
    assert out["view"] == "cohort" and "rows" not in out
    income, alive = out["counts"]["income_within_threshold"], out["counts"]["alive_and_resident"]
    assert (income["noisy_count"], alive["noisy_count"]) == (2, 3)
    # unbiased: (noisy - p n) / (1 - 2p) with p = 0.25, n = 3
    assert income["estimate"] == pytest.approx((2 - 0.75) / 0.5) and alive["estimate"] == pytest.approx(4.5)
    assert 0 <= income["ci95"][0] <= income["estimate"] <= income["ci95"][1] <= 3
    assert "eligible" not in out["counts"]  # slots are shuffled per criterion: no overall count
    assert out["privacy"]["epsilon_per_query"] == 2.0 and out["subjects"] == 3


def test_bronze_counts_need_the_gateways_flip_probability() -> None:
    result = CheckResult("req-1", "dibao", "2026.1", "cohort", ["a"], ["x"], {}, {"x": np.array([True])})
    with pytest.raises(Exception, match="flip probability"):
        result.cohort_counts()


@pytest.mark.parametrize("view", ["per_criterion", "overall"])
def test_gold_and_silver_json_keep_their_rows(view: str) -> None:
    out = result_json(_result(view))
    assert len(out["rows"]) == 3 and out["counts"]["eligible"] == 2
