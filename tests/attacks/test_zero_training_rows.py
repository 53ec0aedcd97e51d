"""Attack: neighbouring datasets D = {victim} and D' = {} at a record-DP horizontal node (the victim
is the node's only training row). The node refused D' ("this node has no training rows"; with a
holdout file, "holds out all 3 subjects", with the file's path), so the coordinator's first message
told membership with certainty whatever epsilon. Now a node without training rows plans from its
noisy count like any other and sends noise alone: the reply has the same form in both worlds. A
non-DP job still refuses a one-sided split, in words that name no count and no path (those stay in
the node's own log)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from federated import datasets, node, pooled_stats
from federated.admission import LedgerAdmission
from federated.horizontal_client import HorizontalClient
from federated.jobs import JobSpec, parse_job
from federated.node import NodeConfig
from xgate.errors import InvalidInput, XgateError


def _trains(s: str) -> bool:  # the job's hash rule (seed 0) keeps s for training
    return hashlib.sha256(b"xgate-holdout-0:" + s.encode()).digest()[0] >= 256 * node.HOLDOUT_FRACTION


VICTIM = next(f"v{i}" for i in range(100) if _trains(f"v{i}"))
HELD = [f"h{i}" for i in range(1000) if not _trains(f"h{i}")][:3]


def _node(
    tmp: Path, subjects: list[str], holdout: list[str] | None, dp: bool = True, **job: Any
) -> tuple[JobSpec, NodeConfig]:
    tmp.mkdir(parents=True)
    store, ledger = tmp / "store.sqlite", tmp / "ledger.sqlite"
    ages = np.arange(40, 40 + 10 * len(subjects), 10)
    datasets.write_store(
        store,
        "synth",
        subjects,
        {
            "civil.age": datasets.Column(ages, "int", 0, 120),
            "tax.label": datasets.Column(np.arange(len(subjects)) % 2, "flag", 0, 1),
        },
    )
    hold = None
    if holdout is not None:
        hold = tmp / "holdout.txt"
        hold.write_text("\n".join(holdout) + "\n")
    spec = parse_job(
        {
            "job_id": "one-row", "purpose": "fraud-model", "mode": "horizontal", "features": ["civil.age"],
            "label": "tax.label", "label_holder": "tax", "rounds": 2, "secagg": False, "min_nodes": 1,
            **({"dp": {"epsilon": 1.0, "delta": 1e-6, "clip": 1.0, "unit": "record"}} if dp else {}),
            **job,
        }
    )  # fmt: skip
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"synth": 100.0})
    assert admission(spec, "r0").approved
    return spec, NodeConfig(store, "r0", ledger, hold)


def _first_answers(spec: JobSpec, nc: NodeConfig) -> list[tuple[str, ...]]:
    """The form of each first answer (statistics round when the job standardises, fit round 1)."""
    out: list[tuple[str, ...]] = []
    client = HorizontalClient(spec, nc, 1_000_000, ledger_check=True, run_id="1")
    config: dict[str, object] = {"server_round": 1}
    try:
        if spec.standardises():
            arrays, weight, metrics = client.fit([np.zeros(3)], {pooled_stats.PHASE_KEY: pooled_stats.STATISTICS_PHASE})
            out.append(("statistics", str(arrays[0].shape), type(weight).__name__, str(sorted(metrics))))
            config[pooled_stats.CONFIG_KEY] = pooled_stats.stats_to_config({"civil.age": (60.0, 20.0)})
        arrays, weight, metrics = client.fit([np.zeros(2)], config)
    except XgateError as exc:
        return [("refused", exc.message)]
    assert np.all(np.isfinite(arrays[0])) and weight >= 1
    out.append(("fit", str(arrays[0].shape), type(weight).__name__, str(sorted(metrics))))
    return out


@pytest.mark.parametrize("encodings", [{}, {"encodings": {"civil.age": "standardise"}}])
def test_the_hash_rule_node_answers_alike_with_and_without_its_one_training_row(
    tmp_path: Path, encodings: dict[str, Any]
) -> None:
    with_victim = _first_answers(*_node(tmp_path / "D", [*HELD, VICTIM], None, **encodings))
    without = _first_answers(*_node(tmp_path / "Dp", HELD, None, **encodings))
    assert with_victim == without and with_victim[-1][0] == "fit"


def test_a_holdout_file_node_answers_alike_with_and_without_its_one_training_row(tmp_path: Path) -> None:
    with_victim = _first_answers(*_node(tmp_path / "D", ["a", "b", "c", "victim"], ["a", "b", "c"]))
    without = _first_answers(*_node(tmp_path / "Dp", ["a", "b", "c"], ["a", "b", "c"]))
    assert with_victim == without and with_victim[0][0] == "fit"


def test_a_split_refusal_names_no_count_and_no_path(tmp_path: Path) -> None:
    """Without DP a one-sided split is still refused (an exact job has nothing to hide it for), in
    public words; the node's own log keeps the count and the file."""
    spec, nc = _node(tmp_path / "n", ["a", "b", "c"], ["a", "b", "c"], dp=False)
    with capture_logs() as logs, pytest.raises(InvalidInput) as refused:
        node.labelled_rows(spec, nc)
    assert (
        refused.value.message
        == "the node's holdout file holds out all of the node's subjects: none is left to train on"
    )
    assert str(nc.holdout) not in refused.value.message and "3" not in refused.value.message
    assert [(e["subjects"], e["holdout_file"]) for e in logs if e["event"] == "split_one_sided"] == [
        (3, str(nc.holdout))
    ]
    with pytest.raises(InvalidInput, match=r"^the job's holdout rule holds out none of the node's subjects$"):
        node.check_split(np.zeros(5, dtype=bool), None)
