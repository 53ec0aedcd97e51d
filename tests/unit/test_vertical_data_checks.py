"""What a vertical job trains on, checked at the nodes' real ClientApp handlers
(tests/clientapp_relay.py): a label that is not a flag, a holdout that leaves one side of the split
empty, and a dataset reloaded between the run's alignment and its setup are refused with the reason,
never trained on (found by an analyst's review: an integer label trained silently as `> 0` with AUC
NaN, an empty holdout file evaluated to NaN, and a reload mid-run trained on the new rows under the
old alignment)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from federated import datasets, node
from federated import vertical_server as server
from tests.clientapp_relay import FEATURE, LABEL, Federation, federation
from xgate.errors import InvalidInput, VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(120)]
SETS = {"civil": EVERYONE[:100], "tax": EVERYONE[20:]}


def _rewrite(fed: Federation, agency: str, label: datasets.Column | None = None, shift: int = 0) -> None:
    """Replace `agency`'s dataset in its store (as `xgate node load` does), optionally with another
    label column or its feature values shifted."""
    members = SETS[agency]
    values = (np.arange(len(members)) + shift) % 50
    columns = {FEATURE[agency]: datasets.Column(values, "int", 0, 100)}
    if agency == LABEL:
        columns["civil.label"] = label or datasets.Column(np.arange(len(members)) % 2, "flag", 0, 1)
    datasets.write_store(fed.relay.configs[fed.node_of[agency]].store, f"psi_{agency}", members, columns)


@pytest.mark.parametrize(
    "info",
    [
        datasets.ElementInfo("tax.annual_income", "int", 0, 2_000_000),
        datasets.ElementInfo("tax.sector", "category", 0, 5),
        datasets.ElementInfo("civil.age", "int", 1, 2),
    ],
)
def test_a_label_that_is_not_a_flag_is_refused(info: datasets.ElementInfo) -> None:
    with pytest.raises(InvalidInput, match=f"the label '{info.id}' is a {info.type}.*must be a flag"):
        node.check_label(info)


def test_flags_and_two_valued_labels_are_labels() -> None:
    node.check_label(datasets.ElementInfo("civil.label", "flag", 0, 1))
    node.check_label(datasets.ElementInfo("health.readmitted", "category", 0, 1))  # ["no", "yes"]


def test_the_label_holder_refuses_to_train_on_a_label_that_is_not_a_flag(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    _rewrite(fed, "civil", label=datasets.Column(np.arange(100) % 4, "int", 0, 3))
    with pytest.raises(VerticalFailed) as failed:
        fed.set_up()
    assert failed.value.agency == "civil" and "the label 'civil.label' is a int of 0..3" in failed.value.message


@pytest.mark.parametrize(
    ("listed", "reason"),
    [
        ([], "holds out none of the node's subjects"),
        (["110101199003077777"], "holds out none of the node's subjects"),  # a national id, not a pseudonym
        (EVERYONE, "holds out all of the node's subjects: none is left to train on"),
    ],
)
def test_a_holdout_file_leaving_one_side_of_the_split_empty_is_refused(
    tmp_path: Path, listed: list[str], reason: str
) -> None:
    fed = federation(tmp_path, SETS)
    civil = fed.node_of["civil"]
    holdout = tmp_path / "holdout.txt"
    holdout.write_text("\n".join(listed))
    fed.relay.configs[civil] = dataclasses.replace(fed.relay.configs[civil], holdout=holdout)
    with pytest.raises(VerticalFailed) as failed:
        fed.align()
    assert failed.value.agency == "civil" and reason in failed.value.message


def test_a_dataset_reloaded_between_alignment_and_setup_is_not_trained_on(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    alignment, train, test = fed.align()
    _rewrite(fed, "tax", shift=7)  # the analyst reloads tax's extract while the job runs
    parts = sorted(fed.relay.configs)
    width = fed.job.embedding_dim * len(parts)
    requests = server._setup_requests(alignment, parts, fed.node_of[LABEL], train, test, width)
    with pytest.raises(VerticalFailed) as failed:
        fed.relay.send("train.setup", requests)
    assert failed.value.agency == "tax" and "data changed since this run's alignment" in failed.value.message


def test_unchanged_data_sets_up(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    _rewrite(fed, "tax")  # the same values written again: the same digest
    fed.set_up()
