"""Running an approved DP job again to average its noise away.

A node's DP-SGD or embedding noise is calibrated so that one run of a job spends the job's ε; a
second run of the same job releases fresh noise on the same rows, and averaging k runs' models or
embeddings cuts the noise by √k (tests/attacks/test_vertical_replay.py measures that for one
release). Admission decides a job id once, so without more, a resubmission, or a coordinator
starting the approved job again under a new run id, would cost nothing. Each node now charges
every run after the first again before its first release (`federated.admission.charge_run`),
and refuses the run once a dataset's cap would be passed.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from federated import datasets
from federated.admission import (
    LedgerAdmission,
    PolicyAdmission,
    admit_at_node,
    charge_run,
    label_release_key,
    record_dp_plan,
)
from federated.horizontal_client import HorizontalClient
from federated.jobs import JobSpec, parse_job
from federated.node import NodeConfig
from policies.budgets import PrivacyLedger
from policies.decision import PolicyEngine
from tests.clientapp_relay import federation
from tests.unit.training_support import job_body, write_region_stores, write_training_policies
from xgate.errors import PolicyDenied, VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(160)]
SETS = {"civil": EVERYONE[:140], "tax": EVERYONE[10:], "hrss": EVERYONE[5:150]}


def _dp_job(job_id: str = "rerun-1", epsilon: float = 2.0, **kw: object) -> JobSpec:
    body = {
        "job_id": job_id,
        "purpose": "fraud-model",
        "mode": "horizontal",
        "features": ["civil.age"],
        "label": "tax.label",
        "label_holder": "tax",
        "rounds": 3,
        "secagg": False,
        "min_nodes": 1,
        "dp": {"epsilon": epsilon, "delta": 1e-6, "clip": 1.0, "unit": "record"},
        **kw,
    }
    return parse_job(body)


def _ledger_node(tmp_path: Path, cap: float) -> tuple[Path, Path]:
    store, ledger = tmp_path / "store.sqlite", tmp_path / "ledger.sqlite"
    subj = [f"p{i}" for i in range(40)]
    cols = {
        "civil.age": datasets.Column(np.arange(40) % 60 + 18, "int", 0, 120),
        "tax.label": datasets.Column(np.arange(40) % 2, "flag", 0, 1),
    }
    datasets.write_store(store, "synth", subj, cols)
    LedgerAdmission(ledger, store).configure(["fraud-model"], {"synth": cap})
    return store, ledger


def _release(ledger: Path, job: JobSpec, run_id: str) -> None:
    """What a node does before its first noisy release of a run (DP-SGD or embeddings)."""
    assert job.dp is not None
    record_dp_plan(ledger, job, run_id=run_id, epsilon=job.dp.epsilon, noise_multiplier=1.0, sample_rate=0.1, steps=9)


def test_every_run_of_an_approved_dp_job_spends_its_epsilon_again(tmp_path: Path) -> None:
    store, ledger = _ledger_node(tmp_path, cap=5.0)
    job = _dp_job(epsilon=2.0)
    assert LedgerAdmission(ledger, store)(job, "r0").approved
    spent = lambda: LedgerAdmission(ledger, store).spent("synth")  # noqa: E731
    assert spent() == 2.0  # the approval pays for the first run
    _release(ledger, job, "101")
    _release(ledger, job, "101")  # Flower sends many messages per run: charged once
    assert spent() == 2.0
    _release(ledger, job, "202")  # the coordinator starts the approved job again
    assert spent() == 4.0
    with pytest.raises(PolicyDenied, match=r"run 303 of job 'rerun-1', which already ran here.*exhausted"):
        _release(ledger, job, "303")  # 4 + 2 > 5
    assert spent() == 4.0  # a refused run spends nothing
    with pytest.raises(PolicyDenied, match="run 303"):
        _release(ledger, job, "303")  # and stays refused when its messages come again
    _release(ledger, job, "202")  # an admitted run goes on
    assert [s.job_id for s in PrivacyLedger(ledger).spends()] == ["rerun-1", f"rerun-1~{job.digest()[:16]}#run-202"]


def test_a_changed_definition_pays_at_admission_for_its_own_first_run(tmp_path: Path) -> None:
    store, ledger = _ledger_node(tmp_path, cap=7.0)
    first = _dp_job(epsilon=2.0)
    assert LedgerAdmission(ledger, store)(first, "r0").approved
    _release(ledger, first, "1")
    changed = _dp_job(epsilon=2.0, rounds=7)
    decided = LedgerAdmission(ledger, store)(changed, "r0")
    assert decided.approved and decided.redecided == "job definition changed"
    _release(ledger, changed, "2")  # covered by its approval
    assert LedgerAdmission(ledger, store).spent("synth") == 4.0
    _release(ledger, changed, "3")
    assert LedgerAdmission(ledger, store).spent("synth") == 6.0


def test_two_runs_started_at_once_are_not_both_free(tmp_path: Path) -> None:
    """Which run is the first is decided under the ledger's write lock."""
    for attempt in range(8):
        store, ledger = _ledger_node(tmp_path / str(attempt), cap=100.0)
        job = _dp_job(epsilon=2.0)
        assert LedgerAdmission(ledger, store)(job, "r0").approved
        barrier = threading.Barrier(4)

        def start(run: str, ledger: Path = ledger, job: JobSpec = job, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            _release(ledger, job, run)

        threads = [threading.Thread(target=start, args=(str(r),)) for r in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert LedgerAdmission(ledger, store).spent("synth") == 8.0  # four runs: one free, three charged


def test_policy_admission_nodes_charge_reruns_too(tmp_path: Path) -> None:
    """A node deciding under its own Cedar policy set (the gateway's and remote sites' admission)."""
    policy_dir = write_training_policies(tmp_path / "policies", cap=5.0)
    (agency, store, ledger), *_ = write_region_stores(tmp_path, [80])
    job = parse_job({**job_body("cedar-rerun", 2.0), "requester": "an-liu"})
    assert job.dp is not None
    admit_at_node(job, agency, ledger, store, policy_dir)
    assert PolicyAdmission(PolicyEngine.load(policy_dir), ledger, store)(job, agency).approved
    plan = {"epsilon": job.dp.epsilon, "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 9}
    record_dp_plan(ledger, job, run_id="1", **plan)
    record_dp_plan(ledger, job, run_id="2", **plan)
    assert PrivacyLedger(ledger).spent("medical.claims_2025") == 4.0
    with pytest.raises(PolicyDenied, match="exhausted"):
        record_dp_plan(ledger, job, run_id="3", **plan)


def test_the_horizontal_client_charges_each_run_it_is_built_for(tmp_path: Path) -> None:
    store, ledger = _ledger_node(tmp_path, cap=5.0)
    job = _dp_job(epsilon=2.0)
    assert LedgerAdmission(ledger, store)(job, "r0").approved
    nc = NodeConfig(store, "r0", ledger, None, None)
    for run in ("7", "8"):
        client = HorizontalClient(job, nc, 1000, ledger_check=True, run_id=run)
        client.record_plan(client.dp_plan(30))
    assert LedgerAdmission(ledger, store).spent("synth") == 4.0
    client = HorizontalClient(job, nc, 1000, ledger_check=True, run_id="9")
    with pytest.raises(PolicyDenied, match="already ran here"):
        client.record_plan(client.dp_plan(30))


def test_a_coordinator_rerunning_a_vertical_dp_job_pays_at_every_feature_node(tmp_path: Path) -> None:
    """On the nodes' real ClientApp handlers: cap 10, job ε 4 (tests/clientapp_relay.py)."""
    fed = federation(tmp_path, SETS, dp=True)
    spent = {a: lambda a=a: PrivacyLedger(tmp_path / a / "ledger.sqlite").spent(f"psi_{a}") for a in SETS}
    fed.set_up()
    assert {a: f() for a, f in spent.items()} == {"civil": 4.0, "tax": 4.0, "hrss": 4.0}
    fed.relay.run_id = 2
    fed.set_up()  # every feature node answers the new run, and pays for it
    assert spent["tax"]() == spent["hrss"]() == 8.0
    fed.relay.run_id = 3
    with pytest.raises(VerticalFailed, match=r"'train.setup' failed: node refused run 3 .* already ran here"):
        fed.set_up()  # 8 + 4 > 10
    assert spent["tax"]() == 8.0


def test_a_ledger_from_before_keeps_what_it_spent(tmp_path: Path) -> None:
    """LedgerAdmission used to keep its spends in its own `spend` table: an upgraded node adopts them."""
    store, ledger = _ledger_node(tmp_path, cap=5.0)
    with sqlite3.connect(ledger) as conn:
        conn.execute("CREATE TABLE spend (dataset TEXT, job_id TEXT, epsilon REAL, PRIMARY KEY (dataset, job_id))")
        conn.execute("INSERT INTO spend VALUES ('synth', 'old-job', 4.5)")
    assert LedgerAdmission(ledger, store).spent("synth") == 4.5
    assert not LedgerAdmission(ledger, store)(_dp_job(epsilon=1.0), "r0").approved  # 4.5 + 1 > 5


def _label_dp_job(job_id: str, label_eps: float) -> JobSpec:
    return parse_job(
        {
            "job_id": job_id,
            "purpose": "fraud-model",
            "mode": "vertical",
            "features": ["civil.age"],
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 2,
            "label_dp": label_eps,
        }
    )


def test_each_label_dp_release_is_charged_once_at_the_label_holder(tmp_path: Path) -> None:
    """The label holder's flips repeat per (label, ε) (tests/attacks/test_label_inference.py), so a
    release is paid once whichever jobs train on it; another ε is another release and adds up."""
    store, ledger = _ledger_node(tmp_path, cap=5.0)
    admit = LedgerAdmission(ledger, store)
    assert admit(_label_dp_job("labels-a", 2.0), "tax").approved
    assert admit.spent("synth") == 2.0
    assert admit(_label_dp_job("labels-b", 2.0), "tax").approved  # the same release: nothing more
    assert admit.spent("synth") == 2.0
    assert admit(_label_dp_job("labels-c", 2.5), "tax").approved  # a second release
    assert admit.spent("synth") == 4.5
    refused = admit(_label_dp_job("labels-d", 1.0), "tax")
    assert not refused.approved and "exhausted" in refused.reason  # 4.5 + 1 > 5
    assert admit(_label_dp_job("labels-e", 3.0), "civil").approved  # not the label holder: releases no labels
    assert admit.spent("synth") == 4.5


def test_a_policy_admission_label_holder_charges_its_label_release_to_the_registered_dataset(
    tmp_path: Path,
) -> None:
    policy_dir = write_training_policies(tmp_path / "policies", cap=5.0)
    (agency, store, ledger), *_ = write_region_stores(tmp_path, [80])
    admit = PolicyAdmission(PolicyEngine.load(policy_dir), ledger, store)

    def job(job_id: str, eps: float) -> JobSpec:
        body = job_body(job_id, mode="vertical", label_holder=agency, label_dp=eps, min_nodes=1, secagg=None)
        return parse_job({**{k: v for k, v in body.items() if v is not None}, "requester": "an-liu"})

    assert admit(job("vl-1", 3.0), agency).approved and admit(job("vl-2", 3.0), agency).approved
    assert PrivacyLedger(ledger).spent("medical.claims_2025") == 3.0  # one release, two jobs
    refused = admit(job("vl-3", 2.5), agency)
    assert not refused.approved and "exhausted" in refused.reason


def test_a_definition_approved_again_pays_for_its_next_run_once(tmp_path: Path) -> None:
    """d1, then d2 under the same id, then d1 again: d1's new approval pays for its next run."""
    store, ledger = _ledger_node(tmp_path, cap=20.0)
    d1, d2 = _dp_job(epsilon=2.0), _dp_job(epsilon=2.0, rounds=7)
    admit = LedgerAdmission(ledger, store)
    assert admit(d1, "r0").approved
    _release(ledger, d1, "1")
    assert admit(d2, "r0").approved
    _release(ledger, d2, "2")
    assert admit(d1, "r0").approved  # decided again (the definition changed back): charged as new
    _release(ledger, d1, "3")  # the first run under that approval
    assert admit.spent("synth") == 6.0  # three approvals, three runs: nothing twice


def test_a_run_of_a_definition_the_ledger_no_longer_approves_is_refused(tmp_path: Path) -> None:
    """The approval and its charges are read with the run: a run of d1 after the ledger re-decided
    the id for d2 is refused, not charged d2's amounts."""
    store, ledger = _ledger_node(tmp_path, cap=20.0)
    d1, d2 = _dp_job(epsilon=2.0), _dp_job(epsilon=0.1, rounds=7)
    admit = LedgerAdmission(ledger, store)
    assert admit(d1, "r0").approved
    _release(ledger, d1, "1")
    assert admit(d2, "r0").approved
    with pytest.raises(PolicyDenied, match="not approved"):
        charge_run(ledger, d1, "2")


def test_a_ledger_from_before_can_still_decide_its_old_jobs_again(tmp_path: Path) -> None:
    """The old table summed every re-decision under the job id: adopted under a key of its own, a
    later charge under the job id is a new charge, not a replay with another ε (which would raise)."""
    store, ledger = _ledger_node(tmp_path, cap=10.0)
    job = _dp_job(epsilon=2.0)
    assert LedgerAdmission(ledger, store)(job, "r0").approved
    with sqlite3.connect(ledger) as conn:  # as an old node left it: the job decided twice, 4.0 under its id
        conn.execute("DELETE FROM spends")
        conn.execute("CREATE TABLE spend (dataset TEXT, job_id TEXT, epsilon REAL, PRIMARY KEY (dataset, job_id))")
        conn.execute("INSERT INTO spend VALUES ('synth', 'rerun-1', 4.0)")
    admit = LedgerAdmission(ledger, store)
    admit.configure(["fraud-model"], {"synth": 9.0})  # the node's policy changes: decided again
    decided = admit(job, "r0")
    assert decided.approved and decided.redecided == "node policy changed"
    assert admit.spent("synth") == 6.0  # 4.0 adopted + this decision's 2.0 (conservative)


def test_any_label_name_and_epsilon_fit_the_spend_key() -> None:
    key = label_release_key("a" * 100 + ".label", 1.2345678901234567e-05)
    assert len(key) <= 128 and key == label_release_key("a" * 100 + ".label", 1.2345678901234567e-05)
    assert key != label_release_key("a" * 100 + ".label", 1.5e-05)
