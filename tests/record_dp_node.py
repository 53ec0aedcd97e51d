"""One horizontal record-DP node for attack tests on its real HorizontalClient: a store of `n`
people (age, a label that follows it), a ledger that approved the job under an ε cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from federated import datasets
from federated.admission import LedgerAdmission
from federated.jobs import JobSpec, parse_job
from federated.node import NodeConfig


def record_dp_node(
    tmp_path: Path, job_id: str, *, n: int = 400, cap: float = 100.0, **job_fields: object
) -> tuple[JobSpec, NodeConfig]:
    store, ledger = tmp_path / "store.sqlite", tmp_path / "ledger.sqlite"
    rng = np.random.default_rng(0)
    age = rng.integers(18, 90, n)
    cols = {
        "civil.age": datasets.Column(age, "int", 0, 120),
        "tax.label": datasets.Column((age + rng.normal(0, 15, n) > 55).astype(int), "flag", 0, 1),
    }
    datasets.write_store(store, "synth", [f"p{i}" for i in range(n)], cols)
    body: dict[str, object] = {
        "job_id": job_id, "purpose": "fraud-model", "mode": "horizontal", "features": ["civil.age"],
        "label": "tax.label", "label_holder": "tax", "rounds": 3, "secagg": False, "min_nodes": 1,
        "dp": {"epsilon": 4.0, "delta": 1e-6, "clip": 1.0, "unit": "record"}, **job_fields,
    }  # fmt: skip
    job = parse_job(body)
    LedgerAdmission(ledger, store).configure(["fraud-model"], {"synth": cap})
    assert LedgerAdmission(ledger, store)(job, "r0").approved
    return job, NodeConfig(store, "r0", ledger, None, None)
