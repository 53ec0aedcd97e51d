"""Admission, privacy-budget ledger, ClientApp refusal and the server's update handling."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from typer.testing import CliRunner

from app.train_cli import app
from federated import datasets
from federated.admission import LedgerAdmission, require_approval
from federated.horizontal_client import HorizontalClient
from federated.horizontal_server import JobFailed, XgateFedAvg
from federated.jobs import parse_job
from federated.node import NodeConfig
from federated.runner import NodeSpec, run_job
from xgate.errors import PolicyDenied

FEATS = ["civil.age", "tax.income", "civil.region"]


def _job(job_id: str = "job-1", eps: float | None = 2.0, purpose: str = "fraud-model", **kw: Any) -> Any:
    dp = {"epsilon": eps, "delta": 1e-5, "clip": 1.0} if eps else None
    return parse_job(
        {
            "job_id": job_id,
            "purpose": purpose,
            "mode": "horizontal",
            "features": FEATS,
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 1,
            "dp": dp,
            **kw,
        }
    )


@pytest.fixture
def node(tmp_path: Path) -> NodeSpec:
    subj, cols, _ = datasets.synthetic_population(200, seed=3)
    store = tmp_path / "store.sqlite"
    datasets.write_store(store, "synth", subj, {e: cols[e] for e in [*FEATS, "tax.label"]})
    spec = NodeSpec("region0", store, tmp_path / "ledger.sqlite")
    LedgerAdmission(spec.ledger, spec.store).configure(["fraud-model"], {"synth": 5.0})
    return spec


def test_budget_is_charged_persisted_and_refused_when_exceeded(node: NodeSpec) -> None:
    adm = LedgerAdmission(node.ledger, node.store)
    assert adm(_job("job-1", 2.0), "region0").approved
    assert adm(_job("job-1", 2.0), "region0").approved  # idempotent: charged once
    again = LedgerAdmission(node.ledger, node.store)  # survives a restart
    assert again.spent("synth") == pytest.approx(2.0)
    assert again(_job("job-2", 3.0), "region0").approved
    refused = again(_job("job-3", 0.5), "region0")
    assert not refused.approved and "budget" in refused.reason and refused.epsilon == 0.0
    assert again.spent("synth") == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (lambda: _job(purpose="marketing"), "purpose"),
        (lambda: _job(eps=6.0), "budget"),
    ],
)
def test_refusals(node: NodeSpec, job: Any, reason: str) -> None:
    d = LedgerAdmission(node.ledger, node.store)(job(), "region0")
    assert not d.approved and reason in d.reason


def test_non_dp_jobs_can_be_forbidden_and_reused_job_ids_decided_again(node: NodeSpec) -> None:
    adm = LedgerAdmission(node.ledger, node.store)
    adm.configure(["fraud-model"], {"synth": 5.0}, allow_non_dp=False)
    assert not adm(_job("job-9", None), "region0").approved
    assert adm(_job("job-10", 1.0), "region0").approved
    again = adm(_job("job-10", 1.0, rounds=2), "region0")  # same id, other definition: decided again
    assert again.approved and again.redecided == "job definition changed"
    assert adm.spent("synth") == pytest.approx(2.0)  # and charged again


def test_clientapp_refuses_unapproved_job(node: NodeSpec) -> None:
    nc = NodeConfig(node.store, node.agency, node.ledger, None)
    with pytest.raises(PolicyDenied):
        HorizontalClient(_job("never-approved", 1.0), nc, 1000, ledger_check=True, run_id="1")
    with pytest.raises(PolicyDenied):
        require_approval(node.ledger.with_name("missing.sqlite"), _job())
    job = _job("approved", 1.0)
    assert LedgerAdmission(node.ledger, node.store)(job, node.agency).approved
    HorizontalClient(job, nc, 1000, ledger_check=True, run_id="1")  # does not raise


def test_run_job_refused_before_any_process_starts(node: NodeSpec, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    with pytest.raises(PolicyDenied, match="budget"):
        run_job(
            _job("too-much", 9.0, min_nodes=1, secagg=False), [node], job_dir=tmp_path / "job", on_event=events.append
        )
    assert [e["event"] for e in events] == ["job_submitted", "job_refused"]
    assert not (tmp_path / "job" / "logs").exists()


def _fitres(arrays: list[np.ndarray], n: int) -> FitRes:
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {})


def test_server_rejects_bad_updates_and_enforces_min_nodes(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    job = _job("srv", None, secagg=False, min_nodes=2)
    strat = XgateFedAvg(job, tmp_path, events.append, max_weight=100)
    strat.current = [np.zeros(3)]
    good = [
        (SimpleNamespace(node_id=1), _fitres([np.array([0.1, 0.2, 0.3])], 10)),
        (SimpleNamespace(node_id=2), _fitres([np.array([0.3, 0.0, -0.3])], 30)),
    ]
    bad = (SimpleNamespace(node_id=3), _fitres([np.array([np.nan, 0, 0])], 10))
    params, _ = strat.aggregate_fit(1, [*good, bad], [])
    assert params is not None
    rejected = [e for e in events if e["event"] == "update_rejected"]
    assert rejected and rejected[0]["node_id"] == 3 and "NaN" in rejected[0]["reason"]
    done = next(e for e in events if e["event"] == "round_completed")
    assert done["participants"] == [1, 2]
    with pytest.raises(JobFailed, match="needs 2"):
        strat.aggregate_fit(2, [good[0], bad], [])
    assert events[-1]["event"] == "job_failed"


def test_cli_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["submit", "--job", str(tmp_path / "nope.toml"), "--nodes", str(tmp_path / "n.toml")])
    assert res.exit_code == 1 and "not found" in res.output
    bad = tmp_path / "job.toml"
    bad.write_text('job_id = "x"\n')
    res = runner.invoke(app, ["submit", "--job", str(bad), "--nodes", str(tmp_path / "n.toml")])
    assert res.exit_code == 1 and "invalid job" in res.output
    res = runner.invoke(app, ["status", "ghost", "--root", str(tmp_path)])
    assert res.exit_code == 1 and "no job" in res.output


@pytest.mark.parametrize("flag", [{}, {"ledger-check": False}])
def test_the_horizontal_clientapp_admits_whatever_the_coordinators_run_config_says(
    node: NodeSpec, tmp_path: Path, flag: dict[str, object]
) -> None:
    """The run config is the coordinator's to write; it once carried a switch that turned this off."""
    from flwr.app import Context, RecordDict

    from federated.horizontal_client import client_fn

    node_config = {"store": str(node.store), "agency": node.agency, "ledger": str(node.ledger)}
    run_config = {**_job("never-approved", 1.0).run_config(tmp_path), "max-weight": 1000, **flag}
    with pytest.raises(PolicyDenied, match="never-approved"):
        client_fn(Context(1, 1, node_config, RecordDict(), run_config))  # type: ignore[arg-type]
