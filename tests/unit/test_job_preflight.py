"""A job its nodes cannot run is refused before Flower starts and before the job id is recorded:
a feature no node holds, a vertical label holder missing from the nodes or without the label.
Before, each was found 15-20 s in, after the SuperLink and SuperNodes had started, and used up the
job id (thirteenth session's review)."""

from __future__ import annotations

import pytest

from federated.jobs import parse_job
from federated.runner import check_holdings
from xgate.errors import InvalidInput

HOLDINGS = {"civil": {"civil.age", "civil.sex"}, "tax": {"tax.income", "tax.label"}}


def _job(**overrides: object) -> object:
    body = {
        "job_id": "preflight",
        "purpose": "fraud-model",
        "mode": "vertical",
        "features": ["civil.age", "tax.income"],
        "label": "tax.label",
        "label_holder": "tax",
        "rounds": 1,
        "min_nodes": 2,
        **overrides,
    }
    return parse_job({k: v for k, v in body.items() if v is not None})  # None: the key left out


def test_a_job_its_nodes_hold_passes() -> None:
    check_holdings(_job(), HOLDINGS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"features": ["civil.nope", "tax.income"]},
            r"no node of this job holds \['civil.nope'\] \(its nodes: civil, tax\)",
        ),
        ({"label_holder": "taxx"}, r"label holder 'taxx' is not among this job's nodes \(civil, tax\)"),
        ({"label_holder": "civil"}, r"label holder 'civil' holds no 'tax.label'"),
    ],
)
def test_a_job_its_nodes_cannot_run_is_refused_naming_why(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        check_holdings(_job(**overrides), HOLDINGS)  # type: ignore[arg-type]


REGIONS = {"north": {"civil.age", "tax.income", "tax.label"}, "south": {"civil.age", "tax.income", "tax.label"}}


def test_a_horizontal_job_needs_no_label_holder_and_runs_where_every_node_holds_it_all() -> None:
    job = _job(mode="horizontal", label_holder=None)
    assert job.label_holder == ""  # type: ignore[attr-defined]
    check_holdings(job, REGIONS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lacking", "reason"),
    [
        ("civil.age", r"node 'south' holds no \['civil.age'\]: every node of a horizontal job holds all its features"),
        ("tax.label", r"node 'south' holds no \['tax.label'\]: .* and its own labels"),
    ],
)
def test_a_horizontal_node_without_a_feature_or_the_label_is_named_before_anything_starts(
    lacking: str, reason: str
) -> None:
    holdings = {**REGIONS, "south": REGIONS["south"] - {lacking}}
    with pytest.raises(InvalidInput, match=reason):
        check_holdings(_job(mode="horizontal", label_holder=None), holdings)  # type: ignore[arg-type]


def test_a_vertical_job_without_a_label_holder_is_refused_saying_so() -> None:
    with pytest.raises(InvalidInput, match="a vertical job names its label_holder: the agency that holds the label"):
        _job(label_holder=None)
