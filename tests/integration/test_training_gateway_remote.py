"""The product path of a deployment across machines, on loopback: `xgate gateway serve` in remote
training mode (its own long-lived SuperLink behind the Fleet gate, configured with the agencies'
public keys only) and two agencies each running `xgate node supernode` from their own node.toml.
An analyst's POST /v1/training/jobs runs on the agencies' SuperNodes; the gateway's audit log
shows the run, and the gateway's state holds no agency store."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import tomli_w

from app.launcher import Supervisor
from client.sdk import GatewayClient, GatewayError
from crypto import flower_keys as fk
from crypto import pki
from federated.admission import require_approval
from federated.deployment import free_port
from federated.jobs import JobSpec
from federated.remote import RemoteNode
from tests.integration.remote_support import Site, flower_processes, start_site, write_catalogue, write_node_toml
from tests.unit.training_support import job_body, prepare_gateway_dir, write_region_stores, write_training_policies

# Minutes of Flower processes; on a loaded 2-core CI box a job has taken over 300 s (the default).
pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=110), pytest.mark.timeout(900)]
AGENCIES = ["region0", "region1"]


@dataclass
class Deployment:
    url: str
    keys: dict[str, str]
    root: Path
    gate_port: int
    sites: dict[str, Site] = field(default_factory=dict)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("training-remote")
    ca = root / "ca"
    pki.init_ca(ca, "test federation CA")
    link = pki.issue(ca, "flower-superlink", "gateway", root / "gateway" / "superlink", days=1)  # SAN 127.0.0.1
    policies = write_training_policies(root / "policies", cap=3.0)
    gate_port = free_port()
    gw = root / "gateway"
    keys, section = prepare_gateway_dir(gw, policies, catalogue=str(write_catalogue(gw / "catalogue.toml")))
    nodes, sites = [], {}
    for agency, store, ledger in write_region_stores(root / "sites", [250, 250]):
        key = fk.certify_supernode_key(ca, agency, store.parent / "keys", days=1)
        config = write_node_toml(
            store.parent, agency, store, ledger, gate_port,
            ca_cert=str(ca / pki.CA_CERT), supernode_key=str(key.private_key), supernode_cert=str(key.certificate),
            crl=str(ca / pki.CRL), policy_dir=str(policies),
        )  # fmt: skip
        sites[agency] = Site(agency, config, store, ledger, RemoteNode(agency, key.public_key, key.certificate))
        # The gateway is configured with the public key and certificate only: no store, no ledger.
        nodes.append({"agency": agency, "public_key": str(key.public_key), "certificate": str(key.certificate)})
    config = {
        "gateway": section,
        "training": {
            "superlink_host": "127.0.0.1",
            "superlink_port": gate_port,
            "superlink_cert": str(link.cert_path),
            "superlink_key": str(link.key_path),
            "ca_cert": str(ca / pki.CA_CERT),
            "crl": str(ca / pki.CRL),
            "max_weight": 400,
            "connect_timeout_s": 90.0,
            "nodes": nodes,
        },
    }
    (gw / "gateway.toml").write_text(tomli_w.dumps(config))
    d = Deployment("", keys, root, gate_port, sites)
    try:
        with Supervisor(log_dir=root / "logs") as supervisor:
            child = supervisor.start(
                "gateway", ["gateway", "serve", "--config", str(gw / "gateway.toml"), "--insecure"]
            )
            d.url = str(child.announcement["url"])
            for site in sites.values():  # the agencies start their SuperNodes whenever they like
                start_site(site)
            yield d
    finally:
        for site in sites.values():
            if site.proc is not None and site.proc.poll() is None:
                site.proc.send_signal(signal.SIGTERM)
        for site in sites.values():
            if site.proc is not None:
                try:
                    site.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    site.proc.kill()
    deadline = time.monotonic() + 15
    while flower_processes(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert flower_processes(root) == [], "a Flower process outlived the gateway or a node wrapper"
    assert all(s.proc is not None and s.proc.returncode == 0 for s in sites.values())


def test_job_through_the_gateway_runs_on_the_agencies_own_supernodes(deployment: Deployment) -> None:
    body = job_body("it-gw-remote-1", epsilon=1.0)
    with GatewayClient(deployment.url, deployment.keys["analyst"]) as analyst:
        analyst.submit_training_job(body)
        deadline = time.monotonic() + 300
        while (status := analyst.training_job_status("it-gw-remote-1"))["state"] not in (
            "completed",
            "failed",
            "refused",
        ):
            assert time.monotonic() < deadline, status
            time.sleep(1.0)
        assert status["state"] == "completed", status
        assert status["model_sha256"] and status["gateway_decision"]["policy_ids"] == ["train-medical-claims"]
        # ε charged at the gateway: another 2.5 of the 3.0 cap is refused before anything runs. The
        # status says completed when the job's outcome is written; the job slot is free once the
        # worker has stopped the federation, and until then a submission is told to retry (409).
        deadline = time.monotonic() + 60
        while True:
            with pytest.raises(GatewayError) as err:
                analyst.submit_training_job(job_body("it-gw-remote-2", epsilon=2.5))
            if err.value.http_status != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert err.value.http_status == 429

    # Each agency decided admission itself, in its own ledger, at its own site.
    job = JobSpec.model_validate({**body, "requester": "an-liu"})
    for site in deployment.sites.values():
        require_approval(site.ledger, job)
    state = deployment.root / "gateway" / "state"
    assert not list(state.rglob("store.sqlite")) and not list(state.rglob("ledger.sqlite"))

    officer = {"Authorization": f"Bearer {deployment.keys['officer']}"}
    entries = httpx.get(
        f"{deployment.url}/v1/audit/entries", params={"request_id": "it-gw-remote-1", "limit": 1000}, headers=officer
    ).json()["entries"]
    kinds = [e["record"]["kind"] for e in entries]
    for expected in ("training_job_submitted", "training_job_approved", "training_round_completed"):
        assert expected in kinds, kinds
    done = next(e["record"] for e in entries if e["record"]["kind"] == "training_round_completed")
    assert sorted(done["metadata"]["agencies"]) == AGENCIES
    assert "training_job_completed" in kinds
