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
    return parse_job(body)


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
