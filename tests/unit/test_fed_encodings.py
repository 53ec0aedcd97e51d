"""Per-job feature encodings: parsing, catalogue defaults, refusals, and each method's arithmetic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated import datasets, model
from federated.datasets import ElementInfo
from federated.jobs import Encoding, Method, parse_job
from federated.runner import NodeSpec, run_job
from xgate.errors import InvalidInput

BASE: dict[str, Any] = {
    "job_id": "enc-1",
    "purpose": "fraud-model",
    "mode": "vertical",
    "features": ["civil.age", "civil.region", "tax.income"],
    "label": "tax.label",
    "label_holder": "tax",
    "rounds": 1,
}
AGE = ElementInfo("civil.age", "int", 0, 130)
REGION = ElementInfo("civil.region", "category", 0, 3)
FLAG = ElementInfo("civil.disabled", "flag", 0, 1)
INCOME = ElementInfo("tax.income", "int", 0, 2_000_000)


def test_job_file_forms_and_digest_of_a_job_without_encodings() -> None:
    job = parse_job(
        {**BASE, "encodings": {"civil.age": "standardise", "tax.income": {"method": "buckets", "edges": [10, 1e4]}}}
    )
    assert job.encodings["civil.age"] == Encoding(method=Method.STANDARDISE)
    assert job.encodings["tax.income"].edges == (10.0, 10_000.0)
    plain = parse_job(BASE)
    dumped = {
        k: v
        for k, v in plain.model_dump(mode="json").items()
        if k not in ("encodings", "label_dp", "signature", "top_calibration", "valid_until", "vertical_scheme")
    }
    canon = json.dumps(dumped, sort_keys=True, separators=(",", ":")).encode()
    assert plain.digest() == hashlib.sha256(canon).hexdigest()  # decisions recorded before encodings stay valid
    assert job.digest() != plain.digest()


@pytest.mark.parametrize(
    ("encodings", "mode", "message"),
    [
        ({"civil.sex": "minmax"}, "vertical", "not features"),
        ({"civil.age": "cubic"}, "vertical", "encodings.civil.age"),
        ({"civil.age": {"method": "buckets", "edges": []}}, "vertical", "edges"),
        ({"civil.age": {"method": "buckets", "edges": [5, 5]}}, "vertical", "increasing"),
        ({"civil.age": {"method": "minmax", "edges": [5]}}, "vertical", "buckets only"),
    ],
)
def test_invalid_encodings_refused(encodings: dict[str, Any], mode: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_job({**BASE, "mode": mode, "encodings": encodings})


def test_horizontal_standardise_is_pooled_and_refused_only_with_node_level_dp() -> None:
    job = parse_job({**BASE, "mode": "horizontal", "encodings": {"civil.age": "standardise"}})
    assert job.standardises()
    assert not parse_job({**BASE, "mode": "horizontal"}).standardises()
    node_level = {"epsilon": 1, "delta": 1e-6, "clip": 1.0}
    with pytest.raises(InvalidInput, match="node-level DP does not cover"):
        parse_job({**BASE, "mode": "horizontal", "encodings": {"civil.age": "standardise"}, "dp": node_level})
    # record-level DP accounts for the statistics round (federated/dp_sgd.py, pooled_stats.noisy_moments)
    record = {**node_level, "unit": "record"}
    assert parse_job({**BASE, "mode": "horizontal", "encodings": {"civil.age": "standardise"}, "dp": record}).dp


def test_defaults_follow_the_catalogue_and_misfits_are_refused() -> None:
    assert [e.method for e in model.resolve([AGE, REGION, FLAG, INCOME])] == [
        Method.MINMAX,
        Method.ONEHOT,
        Method.MINMAX,
        Method.LOG,
    ]
    with pytest.raises(InvalidInput, match="only onehot"):
        model.resolve([REGION], {"civil.region": Encoding(method=Method.MINMAX)})
    with pytest.raises(InvalidInput, match="flag"):
        model.resolve([FLAG], {"civil.disabled": Encoding(method=Method.LOG)})
    with pytest.raises(InvalidInput, match="at most 256"):
        model.resolve([INCOME], {"tax.income": Encoding(method=Method.ONEHOT)})


@pytest.mark.parametrize(
    ("edges", "outside"),
    [
        ((-5, 10), "-5"),
        ((0, 10), "0"),
        ((50, 2_000_001), "2000001"),
        ((3e6, 4.5e6), "3000000, 4500000"),
        ((-0.5,), "-0.5"),
    ],
)
def test_a_bucket_edge_no_value_can_reach_is_refused(edges: tuple[float, ...], outside: str) -> None:
    """Edges [60000000, 70000000] on an income declared 0..50000000 trained on a column of zeros."""
    assert INCOME.min == 0 and INCOME.max == 2_000_000
    with pytest.raises(InvalidInput, match=rf"bucket edge\(s\) {outside} outside its declared range 0\.\.2000000"):
        model.resolve([INCOME], {"tax.income": Encoding(method=Method.BUCKETS, edges=edges)})
    # the bounds themselves: an edge at max splits off the top value; one just above min, the bottom one
    model.resolve([INCOME], {"tax.income": Encoding(method=Method.BUCKETS, edges=(0.5, 2_000_000))})


def test_each_method_encodes_as_documented() -> None:
    raw = np.array([[20, 100], [40, 0], [60, np.nan], [np.nan, 1_000_000]], dtype=float)
    infos = [AGE, INCOME]
    std = [Encoding(method=Method.STANDARDISE), Encoding(method=Method.BUCKETS, edges=(50, 500))]
    stats = model.fit_stats(infos, std, raw)
    assert stats["civil.age"] == pytest.approx((40.0, np.std([20, 40, 60])))
    x = model.encode(infos, raw, std, stats)
    assert x.shape == (4, 1 + 3) == (4, sum(model.encoded_width(i, e) for i, e in zip(infos, std, strict=True)))
    np.testing.assert_allclose(x[:3, 0], [-1.2247449, 0, 1.2247449], rtol=1e-6)
    assert x[3, 0] == 0.0  # missing: the mean
    np.testing.assert_array_equal(x[:, 1:], [[0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]])  # missing: all zero
    with pytest.raises(InvalidInput, match="statistics"):
        model.encode(infos, raw, std)
    mm = model.encode([INCOME], raw[:, 1:], [Encoding(method=Method.MINMAX)])
    lg = model.encode([INCOME], raw[:, 1:], [Encoding(method=Method.LOG)])
    assert mm[0, 0] == pytest.approx(100 / 2e6) and lg[0, 0] == pytest.approx(np.log1p(100) / np.log1p(2e6))
    oh = model.encode([AGE], np.array([[3.0]]), [Encoding(method=Method.ONEHOT)])
    assert oh.shape == (1, 131) and oh[0, 3] == 1.0


def test_run_job_refuses_an_encoding_that_does_not_fit_before_recording_anything(tmp_path: Path) -> None:
    subj, cols, _ = datasets.synthetic_population(50, seed=1)
    store = tmp_path / "store.sqlite"
    datasets.write_store(store, "s", subj, {e: cols[e] for e in ["civil.age", "civil.region", "tax.label"]})
    job = parse_job(
        {
            **BASE,
            "mode": "horizontal",
            "features": ["civil.age", "civil.region"],
            "secagg": False,
            "min_nodes": 1,
            "encodings": {"civil.region": "log"},
        }
    )
    events: list[dict[str, Any]] = []
    with pytest.raises(InvalidInput, match="only onehot"):
        run_job(job, [NodeSpec("r0", store, tmp_path / "l.sqlite")], job_dir=tmp_path / "j", on_event=events.append)
    assert events == [] and not (tmp_path / "j").exists()


def test_vertical_record_dp_refuses_standardise() -> None:
    """A feature node would standardise with its own rows' mean and sd, which one record moves: every
    row's encoding, and each DP release's sensitivity (16 against the 2 x clip its noise is for, on an
    income column; tests/attacks/test_vertical_standardise_sensitivity.py). Without DP, or with
    minmax/log, the job stands."""
    record = {"epsilon": 1.0, "delta": 1e-6, "clip": 1.0, "unit": "record"}
    with pytest.raises(
        InvalidInput, match=r"standardise in a vertical record-level DP job.*encode civil\.age with minmax"
    ):
        parse_job({**BASE, "encodings": {"civil.age": "standardise"}, "dp": record})
    assert parse_job({**BASE, "encodings": {"civil.age": "minmax", "tax.income": "log"}, "dp": record}).dp
    assert parse_job({**BASE, "encodings": {"civil.age": "standardise"}}).standardises()  # no DP: stays at the node
