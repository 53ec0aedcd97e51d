"""Attack: a requester buys a weak guarantee with delta. Each job's delta was bounded only by < 0.1
and never summed: 11 jobs at (epsilon 0.3, delta 0.099) on a 300-row dataset were all approved
under an epsilon cap of 4, and at delta 0.099 DP-SGD's noise drops from sigma 25.3 to 4.6.

Now each charge records its delta in the PrivacyLedger and a dataset's deltas add up against a
delta cap (configured, else PrivacyLedger.DEFAULT_DELTA_CAP); a job whose delta alone passes the
cap is refused saying so; and where a node plans a job it bounds delta by 1/(10 n), n its released
row count (dp_sgd.delta_problem)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from federated import datasets, dp_sgd, vertical_dp
from federated.admission import LedgerAdmission, charge_run
from federated.guarded_app import public_reason
from federated.horizontal_client import HorizontalClient
from federated.jobs import JobSpec, parse_job
from federated.node import NodeConfig
from federated.vertical_client import dp_plan
from policies.budgets import PrivacyLedger
from xgate.errors import BudgetExhausted, InvalidInput, PolicyDenied

N = 300


def _node(tmp: Path) -> tuple[Path, Path]:
    store, ledger = tmp / "store.sqlite", tmp / "ledger.sqlite"
    age = np.random.default_rng(0).integers(18, 90, N)
    datasets.write_store(
        store,
        "synth",
        [f"p{i}" for i in range(N)],
        {
            "civil.age": datasets.Column(age, "int", 0, 120),
            "tax.label": datasets.Column((age > 55).astype(int), "flag", 0, 1),
        },
    )
    return store, ledger


def _job(k: int, delta: float, epsilon: float = 0.3) -> JobSpec:
    return parse_job(
        {
            "job_id": f"delta-{k:02d}", "purpose": "fraud-model", "mode": "horizontal", "features": ["civil.age"],
            "label": "tax.label", "label_holder": "tax", "rounds": 3, "secagg": False, "min_nodes": 1,
            "dp": {"epsilon": epsilon, "delta": delta, "clip": 1.0, "unit": "record"},
        }
    )  # fmt: skip


def test_the_reviewers_eleven_jobs_are_refused_once_the_delta_cap_is_spent(tmp_path: Path) -> None:
    store, ledger = _node(tmp_path)
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"synth": 4.0}, delta_caps={"synth": 0.3})
    decided = [admission(_job(k, 0.099), "r0") for k in range(11)]
    assert [d.approved for d in decided] == [True] * 3 + [False] * 8
    assert "exhausted for delta: spent 0.297 of its delta cap 0.3, job asks 0.099" in decided[3].reason
    assert PrivacyLedger(ledger).spent_delta("synth") == pytest.approx(0.297)
    assert admission.spent("synth") == pytest.approx(0.9)  # the refused jobs spent no epsilon either


def test_a_delta_larger_than_the_datasets_cap_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    store, ledger = _node(tmp_path)
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"synth": 4.0})  # no delta cap configured: the default
    refused = admission(_job(0, 0.099), "r0")
    assert not refused.approved and refused.epsilon == 0.0
    assert refused.reason == (
        f"delta 0.099 exceeds the delta cap {PrivacyLedger.DEFAULT_DELTA_CAP:g} of dataset 'synth' (the most all"
        " jobs on it may spend together): ask for a smaller delta"
    )
    assert admission(_job(1, 1e-6), "r0").approved
    assert PrivacyLedger(ledger).spent_delta("synth") == pytest.approx(1e-6)
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        admission.configure(["fraud-model"], {"synth": 4.0}, delta_caps={"synth": 1.5})


def test_where_a_node_plans_a_job_delta_is_bounded_by_its_released_row_count(tmp_path: Path) -> None:
    """At delta 0.099 DP-SGD's sigma fell from 25.3 to 4.6 on 240 rows: refused now, from the noisy
    count every message of the run is planned from (post-processing: no refusal reads the exact n)."""
    with pytest.raises(ValueError, match=r"delta 0.099 is too large for this node's dataset.*1/\(10 n\)"):
        dp_sgd.plan(0.3, 0.099, 1.0, rows=240, batch=256, rounds=3, local_epochs=1)
    assert dp_sgd.plan(0.3, 1 / 2400, 1.0, rows=240, batch=256, rounds=3, local_epochs=1).sigma > 4.6
    with pytest.raises(ValueError, match="too large"):
        vertical_dp.plan(1.0, 1e-3, 1.0, n=240, batch=240, rounds=1, raw_features=1)
    store, ledger = _node(tmp_path)
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"synth": 4.0}, delta_caps={"synth": 0.5})
    job = _job(0, 0.099)
    assert admission(job, "r0").approved  # the ledger alone would let it run
    client = HorizontalClient(job, NodeConfig(store, "r0", ledger, None), 1_000_000, ledger_check=True, run_id="1")
    with pytest.raises(InvalidInput, match="too large for this node's dataset"):
        client.fit([np.zeros(2)], {"server_round": 1})


def test_a_vertical_feature_node_refuses_a_delta_too_large_for_its_aligned_rows_saying_what_to_ask_for() -> None:
    """Found at Census-Income's size: a vertical record-DP job at delta 1e-6 over 199,523 aligned
    training rows failed as `internal_error: internal error at immigration`. The refusal is the
    analyst's to act on, and the aligned count is public after alignment, so the reply says it all."""
    job = parse_job(
        {
            "job_id": "v-delta", "purpose": "fraud-model", "mode": "vertical", "features": ["civil.age", "tax.income"],
            "label": "tax.label", "label_holder": "tax", "rounds": 1,
            "dp": {"epsilon": 4.0, "delta": 1e-6, "clip": 1.0, "unit": "record"},
        }
    )  # fmt: skip
    with pytest.raises(InvalidInput) as refused:
        dp_plan(job, 199_523, 3)
    assert str(refused.value.message) == (
        "delta 1e-06 is too large for this node's dataset: record-level DP needs delta at most 1/(10 n) for its"
        " (released) row count n; ask for a delta of at most 5e-07"
    )
    assert public_reason(refused.value, "immigration").startswith("invalid_input: delta 1e-06 is too large")
    assert dp_plan(job, 100_000, 3).epsilon <= 4.0  # 1/(10 n) exactly: allowed
    assert dp_plan(
        parse_job({**job.model_dump(mode="json"), "dp": {**job.dp.model_dump(mode="json"), "delta": 5e-7}}), 199_523, 3
    )


def test_every_further_run_charges_delta_again(tmp_path: Path) -> None:
    store, ledger = _node(tmp_path)
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"synth": 100.0}, delta_caps={"synth": 2.5e-5})
    job = _job(0, 1e-5, epsilon=1.0)
    assert admission(job, "r0").approved
    charge_run(ledger, job, "1")  # the approval paid for the first run
    charge_run(ledger, job, "2")
    assert PrivacyLedger(ledger).spent_delta("synth") == pytest.approx(2e-5)
    with pytest.raises(PolicyDenied, match="exhausted for delta"):
        charge_run(ledger, job, "3")


def test_the_ledger_sums_delta_and_an_old_ledger_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # a ledger as version 1 of the schema left it
        conn.executescript(
            "CREATE TABLE xgate_schema (component TEXT NOT NULL, version INTEGER NOT NULL,"
            " PRIMARY KEY (component, version));"
            "INSERT INTO xgate_schema VALUES ('privacy_ledger', 1);"
            "CREATE TABLE spends (dataset TEXT NOT NULL, job_id TEXT NOT NULL, epsilon REAL NOT NULL,"
            " at TEXT NOT NULL, PRIMARY KEY (dataset, job_id));"
            "INSERT INTO spends VALUES ('a.x', 'old-job', 1.0, '2026-01-01T00:00:00+00:00');"
        )
    ledger = PrivacyLedger(path)
    assert ledger.spent("a.x") == 1.0 and ledger.spent_delta("a.x") == 0.0
    ledger.spend_each([("j1", "a.x", 1.0, 10.0, 4e-5, 1e-4), ("label", "a.x", 0.5, 10.0)])  # label DP: delta 0
    ledger.spend_all("j2", [("a.x", 1.0, 10.0, 4e-5, 1e-4)])
    ledger.spend_all("j2", [("a.x", 1.0, 10.0, 4e-5, 1e-4)])  # replayed: not charged again
    assert ledger.spent_delta("a.x") == pytest.approx(8e-5) and ledger.spent("a.x") == pytest.approx(3.5)
    with pytest.raises(BudgetExhausted) as exhausted:
        ledger.spend_all("j3", [("a.x", 1.0, 10.0, 4e-5, 1e-4)])
    assert exhausted.value.details["delta_cap"] == 1e-4 and ledger.spent("a.x") == pytest.approx(3.5)
