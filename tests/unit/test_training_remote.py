"""The gateway's remote training mode in process: the service decides and charges as before, then
hands run_job the nodes serving the job's datasets and the long-lived link, never an admission
that would open node files; the [training] settings build the remote mode."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from federated.jobs import JobSpec
from federated.remote import RemoteNode, select_participants
from gateway.config import TrainingSettings
from gateway.training_remote import remote_training
from gateway.training_service import TrainingService
from policies.budgets import PrivacyLedger
from policies.decision import PolicyEngine
from tests.unit.training_support import job_body, write_training_policies
from xgate.principal import Principal

ANALYST = Principal("an-liu", "hrss", "analyst", "gold")


class FakeRemote:
    def __init__(self, nodes: list[RemoteNode]) -> None:
        self.nodes, self.started, self.closed, self.asked = nodes, 0, 0, []  # type: ignore[var-annotated]

    def start_in_background(self) -> None:
        self.started += 1

    def participants(self, job_datasets: Any) -> list[RemoteNode]:
        self.asked.append(tuple(job_datasets))
        return select_participants(self.nodes, job_datasets)

    def mode(self) -> str:
        return "the-mode"

    def close(self) -> None:
        self.closed += 1


def test_remote_service_runs_on_the_link_without_coordinator_admission(tmp_path: Path) -> None:
    policies = write_training_policies(tmp_path / "policies")
    nodes = [
        RemoteNode("region0", Path("r0.pub"), datasets=("medical.claims_2025",)),
        RemoteNode("tax", Path("t.pub"), datasets=("tax.income_2025",)),
        RemoteNode("region1", Path("r1.pub")),
    ]
    remote = FakeRemote(nodes)
    calls: list[tuple[JobSpec, list[Any], dict[str, Any]]] = []
    ran = threading.Event()

    def runner(job: JobSpec, run_nodes: list[Any], **kwargs: Any) -> None:
        calls.append((job, run_nodes, kwargs))
        ran.set()

    service = TrainingService(
        policy=PolicyEngine.load(policies),
        ledger=PrivacyLedger(tmp_path / "privacy.sqlite"),
        jobs_dir=tmp_path / "jobs",
        nodes=[],
        audit_log=None,
        runner=runner,
        remote=remote,  # type: ignore[arg-type]
    )
    assert remote.started == 1  # the SuperLink comes up with the gateway, before any job
    answer = service.submit(ANALYST, job_body("rm-1"))
    assert answer["decision"]["datasets"] == ["medical.claims_2025"]
    assert ran.wait(10)
    job, run_nodes, kwargs = calls[0]
    assert job.requester == "an-liu" and remote.asked == [("medical.claims_2025",)]
    assert [n.agency for n in run_nodes] == ["region0", "region1"]  # tax serves another dataset
    assert kwargs["remote"] == "the-mode" and "admission" not in kwargs and "ca_dir" not in kwargs
    service.close()
    assert remote.closed == 1


def test_remote_training_from_settings(tmp_path: Path) -> None:
    settings = TrainingSettings.model_validate(
        {
            "superlink_host": "0.0.0.0",
            "superlink_port": 9092,
            "superlink_cert": str(tmp_path / "l.cert.pem"),
            "superlink_key": str(tmp_path / "l.key.pem"),
            "ca_cert": str(tmp_path / "ca.cert.pem"),
            "max_weight": 1000,
            "connect_timeout_s": 30,
            "nodes": [
                {"agency": "region0", "public_key": str(tmp_path / "r0.pub"), "datasets": ["medical.claims_2025"]}
            ],
        }
    )
    remote = remote_training(settings, Path("policies/catalogue.toml"), tmp_path)
    assert remote is not None and remote.port == 9092 and remote.host == "0.0.0.0"
    assert remote.nodes == [RemoteNode("region0", tmp_path / "r0.pub", None, ("medical.claims_2025",))]
    assert remote.max_weight == 1000 and remote.connect_timeout_s == 30
    assert remote.state_dir == tmp_path / "superlink" and remote.security.crl is None
    assert remote_training(TrainingSettings(), Path("policies/catalogue.toml"), tmp_path) is None
    assert remote_training(None, Path("policies/catalogue.toml"), tmp_path) is None


def test_remote_nodes_without_remote_mode_are_refused_clearly(tmp_path: Path) -> None:
    """What a gateway built without `remote=` does with remote [training] nodes: 503, nothing runs."""
    from gateway.training_service import TrainingNode, TrainingUnavailable

    service = TrainingService(
        policy=PolicyEngine.load(write_training_policies(tmp_path / "policies")),
        ledger=PrivacyLedger(tmp_path / "privacy.sqlite"),
        jobs_dir=tmp_path / "jobs",
        nodes=[TrainingNode("region0", None, None)],  # type: ignore[arg-type]  # as wiring builds them today
        audit_log=None,
        runner=lambda *a, **k: None,
    )
    with pytest.raises(TrainingUnavailable, match="remote training is not wired"):
        service.submit(ANALYST, job_body("rm-2"))
    assert not (tmp_path / "jobs").exists()
