"""A vertical job whose label is empty for some aligned subjects fails with a reason the analyst
can act on, not "internal error at <agency>" (the node's ValueError was hidden by the ClientApp's
guard; thirteenth session's review). Real handlers through tests/clientapp_relay.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federated import datasets
from federated import vertical_server as server
from federated.admission import LedgerAdmission
from federated.jobs import parse_job
from federated.node import NodeConfig
from tests.clientapp_relay import ClientAppRelay
from xgate.errors import VerticalFailed


def test_an_empty_label_among_the_aligned_subjects_is_named_with_what_to_do(tmp_path: Path) -> None:
    store, ledger = tmp_path / "store.sqlite", tmp_path / "ledger.sqlite"
    subjects = [f"p{i}" for i in range(200)]
    ages = np.random.default_rng(0).integers(18, 90, len(subjects))
    datasets.write_store(store, "people", subjects, {"civil.age": datasets.Column(ages, "int", 0, 120)})
    labelled = subjects[:150]  # 50 people with an age and no label
    labels = datasets.Column(np.arange(len(labelled)) % 2, "flag", 0, 1)
    datasets.write_store(store, "labels", labelled, {"tax.label": labels})
    job = parse_job(
        {
            "job_id": "v-missing",
            "purpose": "fraud-model",
            "mode": "vertical",
            "features": ["civil.age"],
            "label": "tax.label",
            "label_holder": "r0",
            "rounds": 1,
            "min_nodes": 1,
        }
    )
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"people": 10.0, "labels": 10.0})
    assert admission(job, "r0").approved
    relay = ClientAppRelay(job, {1: NodeConfig(store, "r0", ledger, None, None)}, tmp_path)
    hello = relay.hello()
    alignment, train, test = server._split(relay, server._private_alignment(relay, [1], 1, hello))
    requests = server._setup_requests(alignment, [1], 1, train, test, job.embedding_dim)
    with pytest.raises(VerticalFailed) as refused:
        relay.send("train.setup", requests)
    reason = str(refused.value)
    assert "the label 'tax.label' is empty for some of the subjects this job aligned" in reason
    assert "required" in reason and "internal error" not in reason
