"""Flower transport refusals over real processes on loopback: an unregistered SuperNode, a SuperNode
trusting another CA, a `flwr` CLI without the CA, a SuperLink certificate for another host name.

One SuperLink (TLS + --enable-supernode-auth, one registered SuperNode) serves the first three
tests; the host-name test needs its own SuperLink with a certificate that does not name 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from crypto import flower_keys as fk
from crypto import pki
from federated import datasets
from federated.admission import LedgerAdmission
from federated.control_api import ControlApi
from federated.deployment import BIN, Federation, NodeSpec, flwr_env
from federated.events import read_events
from federated.jobs import JobSpec, parse_job
from federated.model import encoded_width
from federated.runner import write_app
from tests.integration.test_fed_horizontal import FEATS, assert_no_orphans, make_nodes

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=70)]  # slow: handed out first (tests/conftest.py)


@dataclasses.dataclass
class Link:
    fed: Federation
    security: fk.FlowerSecurity
    node: NodeSpec
    root: Path


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    root = tmp_path_factory.mktemp("fedsec")
    node = make_nodes(root / "data", [150], seed=11)[0]
    # region0 runs; spare is registered but started only by the other-CA test (so only trust can stop it).
    security = fk.prepare_flower_security(root / "pki", ["region0", "spare"])
    fed = Federation(root / "fed", security)
    try:
        fed.start_superlink()
        fed.start_node(node)
        fed.wait_registered(["region0"])
        yield Link(fed, security, node, root)
    finally:
        fed.close()
    assert_no_orphans(fed)


def wait_exit(fed: Federation, name: str, timeout: float = 90.0) -> int:
    proc = fed.procs[name].popen
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} was neither refused nor admitted within {timeout:.0f} s")


def log_of(fed: Federation, name: str) -> str:
    return fed.procs[name].log_path.read_text(errors="replace")


def superlink_nodes(fed: Federation) -> dict[int, str]:
    """node id -> status as the SuperLink itself reports it (`flwr supernode ls`)."""
    out = fed.flwr("supernode", "ls", "xgate", "--format", "json")
    payload = fk_json(out)
    return {int(n["node-id"]): str(n["status"]) for n in payload["nodes"]}


def fk_json(out: str) -> dict[str, Any]:
    return dict(json.loads(out[out.index("{") :]))


def horizontal_job(job_id: str) -> JobSpec:
    return parse_job(
        {
            "job_id": job_id,
            "purpose": "fraud-model",
            "mode": "horizontal",
            "features": FEATS,
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 1,
            "secagg": False,
            "min_nodes": 1,
            "round_timeout_s": 60,
            "job_timeout_s": 120,
        }
    )


def test_unregistered_supernode_is_refused_and_never_fed_the_run(link: Link) -> None:
    fed = link.fed
    rogue_key = fk.generate_supernode_key(link.root / "rogue", "rogue")  # valid key, never registered
    fed.start_node(dataclasses.replace(link.node, agency="rogue"), key=rogue_key)

    job = horizontal_job("it-sec")
    width = sum(encoded_width(i) for i in datasets.element_info(link.node.store, job.features))
    assert LedgerAdmission(link.node.ledger, link.node.store)(job, link.node.agency).approved  # region0 admits it
    app_dir = write_app(job, fed.job_dir, n_nodes=1, max_weight=150, n_features=width)
    run_id = fed.submit(app_dir)  # while the rogue is still trying to get in

    assert wait_exit(fed, "node-rogue") != 0
    node_log, link_log = log_of(fed, "node-rogue"), log_of(fed, "superlink")
    assert "Failed to activate SuperNode" in node_log and "Exit Code: 305" in node_log
    assert "No SuperNode found with the given public key" in link_log and "ApiError:2004" in link_log
    assert "SuperNode ID:" not in node_log

    # The training round is what matters: who fed it. Stop the run there (evaluation adds nothing).
    deadline = time.monotonic() + job.job_timeout_s

    def completed_rounds() -> list[dict[str, Any]]:
        return [e for e in read_events(fed.job_dir / "server-events.jsonl")[0] if e["event"] == "round_completed"]

    while not (rounds := completed_rounds()):
        assert time.monotonic() < deadline, "round 1 did not complete"
        # A fast run may finish between the two looks, so its events are read again before the run
        # counts as ended without a round.
        info = fed.run_info(run_id)
        finished = info is not None and info.status.startswith("finished")
        assert not finished or completed_rounds(), "run ended before round 1"
        time.sleep(0.5)
    fed.stop_run(run_id)  # a no-op when the run already finished
    assert rounds[0]["participants"] == [fed.registered["region0"]]
    # The SuperLink knows exactly the registered keys; only region0 ever came online.
    nodes = superlink_nodes(fed)
    assert set(nodes) == {fed.registered["region0"], fed.registered["spare"]}
    assert nodes[fed.registered["region0"]] == "online" and nodes[fed.registered["spare"]] == "registered"


def test_supernode_trusting_another_ca_cannot_connect(link: Link) -> None:
    other_ca = link.root / "other-ca"
    pki.init_ca(other_ca, "some other CA")
    wrong_trust = dataclasses.replace(link.security, ca_cert=other_ca / pki.CA_CERT)
    # Same SuperLink, a registered key: only the trust anchor differs.
    with Federation(link.root / "other-ca-node", wrong_trust, port=link.fed.port) as other:
        other.start_node(dataclasses.replace(link.node, agency="spare"))
        assert wait_exit(other, "node-spare") != 0
        node_log = log_of(other, "node-spare")
    assert "CERTIFICATE_VERIFY_FAILED" in node_log and "unable to get local issuer certificate" in node_log
    assert "SuperNode ID:" not in node_log
    assert superlink_nodes(link.fed)[link.fed.registered["spare"]] == "registered"  # never activated


def _cli(home: Path, conn: dict[str, object], *args: str) -> dict[str, object]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": "xgate", "xgate": conn}}))
    out = subprocess.run(
        [str(BIN / "flwr"), *args, "xgate", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=flwr_env(home),
        check=False,
    )
    return fk_json(out.stdout)


def test_cli_without_the_ca_cannot_submit(link: Link) -> None:
    fed = link.fed
    runs_before = fed.flwr("ls", "xgate", "--format", "json")
    app_dir = write_app(horizontal_job("it-sec-cli"), link.root / "cli-job", n_nodes=1, max_weight=150)
    # No root-certificates: the CLI falls back to the system trust store, which does not know our CA.
    no_ca = _cli(link.root / "cli-no-ca", {"address": fed.address}, "run", str(app_dir))
    assert no_ca["success"] is False and "Connection to the SuperLink is unavailable" in str(no_ca["error-message"])
    # Plain HTTP against the HTTPS port fails the same way.
    plain = _cli(link.root / "cli-plain", {"address": fed.address, "insecure": True}, "run", str(app_dir))
    assert plain["success"] is False and "unavailable" in str(plain["error-message"])
    # What the CLI hides is a certificate verification failure (system trust store, our CA unknown).
    host, port = fed.address.rsplit(":", 1)
    with (
        pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"),
        socket.create_connection((host, int(port)), timeout=10) as sock,
    ):
        ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    # Control: the same CLI with the CA listed works, and no run was created by the refused calls.
    with_ca = _cli(
        link.root / "cli-ca", {"address": fed.address, "root-certificates": str(link.security.ca_cert)}, "ls"
    )
    assert with_ca["success"] is True
    assert fk_json(fed.flwr("ls", "xgate", "--format", "json"))["runs"] == fk_json(runs_before)["runs"]


def test_control_client_without_the_ca_cannot_submit(link: Link) -> None:
    """The coordinator's own Control API client (federated/control_api.py) verifies as the CLI does."""
    fed = link.fed
    runs_before = fed.flwr("ls", "xgate", "--format", "json")
    app_dir = write_app(horizontal_job("it-sec-client"), link.root / "client-job", n_nodes=1, max_weight=150)
    other_ca = link.root / "client-other-ca"
    pki.init_ca(other_ca, "another CA")
    with pytest.raises(RuntimeError, match=r"run failed: .*CERTIFICATE_VERIFY_FAILED.*unable to get local issuer"):
        ControlApi(fed.address, other_ca / pki.CA_CERT).start_run(app_dir)
    with pytest.raises(RuntimeError, match="run failed: "):  # plain HTTP against the HTTPS port
        ControlApi(fed.address, None, insecure=True).start_run(app_dir)
    # Control: with the federation's CA the same client is answered, and no run was created above.
    assert ControlApi(fed.address, link.security.ca_cert).supernodes()[fed.registered["region0"]] == "online"
    assert fk_json(fed.flwr("ls", "xgate", "--format", "json"))["runs"] == fk_json(runs_before)["runs"]


def test_superlink_certificate_for_another_host_is_refused(tmp_path: Path, link: Link) -> None:
    sec = fk.prepare_flower_security(tmp_path / "pki", ["region0"], hosts=["link.example.org"], loopback=False)
    fed = Federation(tmp_path / "fed", dataclasses.replace(sec, supernode_keys={}))  # dialled as 127.0.0.1
    try:
        fed.start_superlink()
        # The Control API client refuses it (registering region0's key is the first call), by name.
        with pytest.raises(RuntimeError, match=r"CERTIFICATE_VERIFY_FAILED.*IP address mismatch"):
            fed.register_nodes(sec.supernode_keys)
        # A SuperNode with the right CA and a valid key refuses it by name.
        fed.start_node(link.node, key=sec.supernode_keys["region0"])
        assert wait_exit(fed, "node-region0") != 0
        node_log = log_of(fed, "node-region0")
        assert "CERTIFICATE_VERIFY_FAILED" in node_log and "IP address mismatch" in node_log
        # Control: the certificate is fine for the name it carries, so the refusal is about the name.
        host, port = fed.address.rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=str(sec.ca_cert))
        with (
            socket.create_connection((host, int(port)), timeout=10) as sock,
            pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"),
        ):
            ctx.wrap_socket(sock, server_hostname=host)
        with (
            socket.create_connection((host, int(port)), timeout=10) as sock,
            ctx.wrap_socket(sock, server_hostname="link.example.org") as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        fed.close()
    assert_no_orphans(fed)
