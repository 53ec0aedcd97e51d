"""federated/local_link.py with a fake Federation: when the gateway's long-lived local link is
reused, started again, renewed and refused (the real processes: tests/integration/test_training_gateway.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from federated import local_link
from federated.deployment import NodeSpec
from federated.local_link import LocalTraining
from xgate.errors import ConfigError


@dataclass
class FakeProcess:
    code: int | None = None

    def poll(self) -> int | None:
        return self.code


@dataclass
class FakeFederation:
    job_dir: Path
    security: Any
    procs: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    fail_on_start: bool = False

    def start_superlink(self) -> None:
        if self.fail_on_start:
            raise RuntimeError("SuperLink did not start listening in time")
        self.procs["superlink"] = SimpleNamespace(popen=FakeProcess())

    def start_node(self, node: NodeSpec) -> None:
        self.procs[f"node-{node.agency}"] = SimpleNamespace(popen=FakeProcess())

    def wait_registered(self, agencies: list[str], timeout: float) -> dict[int, str]:
        return {100 + i: a for i, a in enumerate(agencies)}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[FakeFederation]:
    feds: list[FakeFederation] = []

    def federation(job_dir: Path, security: Any) -> FakeFederation:
        feds.append(FakeFederation(job_dir, security))
        return feds[-1]

    monkeypatch.setattr(local_link, "Federation", federation)
    monkeypatch.setattr(local_link, "prepare_flower_security", lambda *a, **k: "material")
    return feds


def _training(tmp_path: Path) -> LocalTraining:
    nodes = [NodeSpec(a, tmp_path / f"{a}.sqlite", tmp_path / f"{a}.ledger") for a in ("region0", "region1")]
    return LocalTraining(state_dir=tmp_path / "flower-local", nodes=nodes)


def test_jobs_reuse_one_link_and_count_themselves(tmp_path: Path, started: list[FakeFederation]) -> None:
    training = _training(tmp_path)
    first, second = training.link(), training.link()
    assert first is second and len(started) == 1
    assert first.node_ids == {"region0": 100, "region1": 101}
    assert [first.take_job()["job_on_link"], second.take_job()["job_on_link"]] == [1, 2]
    assert first.take_job()["mode"] == "long-lived"


def test_a_dead_process_starts_a_fresh_link_before_the_next_job(tmp_path: Path, started: list[FakeFederation]) -> None:
    training = _training(tmp_path)
    old = training.link()
    old.fed.procs["node-region1"].popen.code = -9  # a SuperNode killed
    new = training.link()
    assert new is not old and started[0].closed and len(started) == 2 and new.jobs == 0


def test_material_past_half_its_life_is_renewed(tmp_path: Path, started: list[FakeFederation]) -> None:
    training = _training(tmp_path)
    old = training.link()
    old.started_at -= local_link.RENEW_AFTER + dt.timedelta(seconds=1)
    assert training.link() is not old and started[0].closed


def test_a_failed_start_leaves_nothing_running_and_the_next_job_retries(
    tmp_path: Path, started: list[FakeFederation], monkeypatch: pytest.MonkeyPatch
) -> None:
    failing: list[FakeFederation] = []

    def federation(job_dir: Path, security: Any) -> FakeFederation:
        failing.append(FakeFederation(job_dir, security, fail_on_start=True))
        return failing[-1]

    monkeypatch.setattr(local_link, "Federation", federation)
    training = _training(tmp_path)
    with pytest.raises(RuntimeError, match="did not start"):
        training.link()
    assert failing[0].closed
    with pytest.raises(RuntimeError):
        training.link()  # tried again, not a stale half-started link
    assert len(failing) == 2


def test_closed_training_refuses_and_stops_its_link(tmp_path: Path, started: list[FakeFederation]) -> None:
    training = _training(tmp_path)
    training.link()
    training.close()
    assert started[0].closed
    with pytest.raises(ConfigError, match="shut down"):
        training.link()
    with pytest.raises(ConfigError, match="at least one node"):
        LocalTraining(state_dir=tmp_path, nodes=[])


def test_a_job_on_the_link_takes_no_tls_material_of_its_own(tmp_path: Path, started: list[FakeFederation]) -> None:
    from federated.jobs import parse_job
    from federated.runner import run_job
    from tests.unit.training_support import job_body

    job = parse_job(job_body("job-1"))
    link = _training(tmp_path).link()
    for extra in ({"insecure": True}, {"ca_dir": tmp_path}):
        with pytest.raises(ConfigError, match="link's own TLS material"):
            run_job(job, [], job_dir=tmp_path / "job", local=link, **extra)  # type: ignore[arg-type]
    assert not (tmp_path / "job").exists()  # refused before anything was recorded
