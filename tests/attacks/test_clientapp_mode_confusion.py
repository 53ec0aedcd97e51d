"""Attack: a coordinator runs an approved job through the other mode's ClientApp.

The coordinator writes the app bundle, so it names the ClientApp; admission checks the job, not the
app. Run through the vertical ClientApp, an approved horizontal record-DP job answered `query.hello`
with one blinded tag per person in the store: the exact row count, free and once per run id, where
the horizontal design releases a noisy count (400 and 401 told apart every time). Run through the
horizontal ClientApp, a vertical label-DP job trained and evaluated on the true labels (the exact
training positives). Now each ClientApp refuses a job of the other mode before anything is read or
charged (`federated.jobs.require_mode`; thirteenth session's review). Real handlers through
tests/clientapp_relay.py and the real ClientApp gates, real stores and ledgers; the positive
controls switch the check off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from federated import datasets, psi
from federated import horizontal_client as hc
from federated import vertical_client as vc
from federated.admission import LedgerAdmission
from federated.grid_io import cfg_of
from federated.jobs import JobSpec, parse_job
from federated.node import NodeConfig
from tests.clientapp_relay import ClientAppRelay
from xgate.errors import PolicyDenied, VerticalFailed


def _horizontal_node(root: Path, n: int) -> tuple[JobSpec, NodeConfig, LedgerAdmission]:
    root.mkdir(parents=True, exist_ok=True)
    store, ledger = root / "store.sqlite", root / "ledger.sqlite"
    rng = np.random.default_rng(0)
    cols = {
        "civil.age": datasets.Column(rng.integers(18, 90, n), "int", 0, 120),
        "tax.label": datasets.Column(rng.integers(0, 2, n), "flag", 0, 1),
    }
    datasets.write_store(store, "synth", [f"p{i}" for i in range(n)], cols)
    job = parse_job(
        {
            "job_id": "h-dp",
            "purpose": "fraud-model",
            "mode": "horizontal",
            "features": ["civil.age"],
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 2,
            "secagg": False,
            "min_nodes": 1,
            "dp": {"epsilon": 1.0, "delta": 1e-6, "clip": 1.0, "unit": "record"},
        }
    )
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"synth": 10.0})
    assert admission(job, "r0").approved
    return job, NodeConfig(store, "r0", ledger, None, None), admission


def _hello_count(job: JobSpec, nc: NodeConfig, run_id: int) -> int:
    relay = ClientAppRelay(job, {1: nc}, nc.store.parent)
    relay.run_id = run_id
    return psi.count(bytes(cfg_of(relay.hello()[1])["tags"]))


def _count_readout(tmp: Path) -> dict[int, list[int]]:
    counts: dict[int, list[int]] = {}
    for n in (400, 401):
        job, nc, admission = _horizontal_node(tmp / str(n), n)
        spent = admission.spent("synth")
        try:
            counts[n] = [_hello_count(job, nc, run) for run in (1, 2, 3)]
        except VerticalFailed as exc:
            assert "is a horizontal job" in str(exc) and "ClientApp" in str(exc)
        assert admission.spent("synth") == spent
    return counts


def test_a_horizontal_job_through_the_vertical_clientapp_releases_no_count(tmp_path: Path) -> None:
    assert _count_readout(tmp_path) == {}  # every hello refused, nothing charged


def test_positive_control_without_the_check_the_exact_count_comes_out_for_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vc, "require_mode", lambda job, mode: None)
    assert _count_readout(tmp_path) == {400: [400] * 3, 401: [401] * 3}


def _label_dp_context(tmp: Path) -> tuple[Context, np.ndarray, JobSpec]:
    n = 300
    store, ledger = tmp / "store.sqlite", tmp / "ledger.sqlite"
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, n)
    cols = {
        "civil.age": datasets.Column(rng.integers(18, 90, n), "int", 0, 120),
        "civil.label": datasets.Column(label, "flag", 0, 1),
    }
    datasets.write_store(store, "civ", [f"p{i}" for i in range(n)], cols)
    job = parse_job(
        {
            "job_id": "v-ldp",
            "purpose": "fraud-model",
            "mode": "vertical",
            "features": ["civil.age"],
            "label": "civil.label",
            "label_holder": "civil",
            "rounds": 1,
            "secagg": False,
            "min_nodes": 1,
            "label_dp": 1.0,
        }
    )
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"civ": 10.0})
    assert admission(job, "civil").approved
    node_cfg = {"store": str(store), "agency": "civil", "ledger": str(ledger)}
    context = Context(7, 1, node_cfg, RecordDict(), job.run_config(tmp / "job"))  # type: ignore[arg-type]
    return context, label, job


def test_a_vertical_label_dp_job_through_the_horizontal_clientapp_is_refused(tmp_path: Path) -> None:
    context, _, _ = _label_dp_context(tmp_path)
    with pytest.raises(PolicyDenied, match="is a vertical job"):
        hc.plain_client_fn(context)
    with pytest.raises(PolicyDenied, match="is a vertical job"):
        hc.client_fn(context)


def test_positive_control_without_the_check_it_trains_on_the_true_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hc, "require_mode", lambda job, mode: None)
    context, label, job = _label_dp_context(tmp_path)
    client = hc.plain_client_fn(context)
    assert client is not None
    direct = hc.HorizontalClient(job, hc.node.node_config(dict(context.node_config)), 1_000_000, True, run_id="7")
    _, _, metrics = direct.evaluate([np.zeros(2)], {"server_round": 1})
    held = hc.node.is_holdout([f"p{i}" for i in range(len(label))], job, None)
    assert metrics["train_pos"] == int(label[~held].sum())  # the exact count of the true labels


def test_a_vertical_job_gets_no_secagg_stage_answered_by_the_horizontal_secagg_app(tmp_path: Path) -> None:
    """A vertical job is `secagg = true` by default, so the transport check let it into the SecAgg+
    app, whose mods answered the setup stage (signed keys) before `client_fn` was reached (this
    session's review of its own fix)."""
    from tests.attacks.test_secagg_downgrade import Node, _setup

    job = parse_job(
        {
            "job_id": "v-sa",
            "purpose": "fraud-model",
            "mode": "vertical",
            "features": ["civil.age"],
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 2,
            "min_nodes": 3,
        }
    )
    assert job.secagg
    reply = Node(tmp_path, 11, job).ask(hc.secagg_app, _setup(6, 4))
    assert reply.has_error() and "is a vertical job" in reply.error.reason
    plain = Node(tmp_path / "plain", 12, job).ask(hc.app, _setup(6, 4))
    assert plain.has_error() and "is a vertical job" in plain.error.reason  # not "approved with secagg = true"
