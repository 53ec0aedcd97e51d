"""`bench.federated --record-dp --no-vertical` keeps the results file's vertical runs only when they
were made on the same rows; anything else is refused, naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.federated import _earlier_vertical


def _file(tmp_path: Path, rows: int, limit: int | None) -> Path:
    path = tmp_path / "federated.json"
    section = {"rows": rows, "limit": limit, "vertical": {"auc": 0.94}, "vertical_dp_eps1": {"auc": 0.93},
               "horizontal_secagg_dpsgd_eps1": {"auc": 0.92}, "pooled": {"auc": 0.95}}  # fmt: skip
    path.write_text(json.dumps({"record_dp": section}))
    return path


def test_the_vertical_runs_on_the_same_rows_are_kept_and_say_so(tmp_path: Path) -> None:
    kept = _earlier_vertical(_file(tmp_path, 100_000, 100_000), {"rows": 100_000, "limit": 100_000})
    assert set(kept) == {"vertical", "vertical_dp_eps1"}  # not the horizontal runs this run replaces
    assert (
        kept["vertical"]["auc"] == 0.94 and "re-measured by `--record-dp --no-vertical`" in kept["vertical"]["measured"]
    )


def test_vertical_runs_on_other_rows_or_none_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="holds no record_dp vertical runs on these 299,285 rows"):
        _earlier_vertical(_file(tmp_path, 100_000, 100_000), {"rows": 299_285, "limit": None})
    with pytest.raises(SystemExit, match="holds no record_dp vertical runs"):
        _earlier_vertical(tmp_path / "absent.json", {"rows": 100_000, "limit": 100_000})
