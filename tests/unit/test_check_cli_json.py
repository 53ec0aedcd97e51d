"""`xgate check --json` prints the counts in every view; rows only where the view has them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client.cli import result_json
from client.sdk import CheckResult
from xgate.errors import InvalidInput


def _result(view: str) -> CheckResult:
    criteria = ["income_within_threshold", "alive_and_resident"]
    passes = {"income_within_threshold": np.array([True, False, True]), "alive_and_resident": np.array([True] * 3)}
    return CheckResult("req-1", "dibao", "2026.1", view, ["a", "b", "c"], criteria, {}, passes)


def test_bronze_json_has_the_counts_and_no_rows() -> None:
    result = _result("cohort")
    with pytest.raises(InvalidInput, match="no per-subject results"):
        result.rows()  # what --json used to call, after the check was answered and charged
    out = json.loads(json.dumps(result_json(result)))
    assert out["view"] == "cohort" and "rows" not in out
    assert out["counts"] == {"income_within_threshold": 2, "alive_and_resident": 3, "eligible": 2}
    assert out["subjects"] == 3


@pytest.mark.parametrize("view", ["per_criterion", "overall"])
def test_gold_and_silver_json_keep_their_rows(view: str) -> None:
    out = result_json(_result(view))
    assert len(out["rows"]) == 3 and out["counts"]["eligible"] == 2
