"""POST /v1/training/jobs over real processes: a gateway on loopback with two regional training
nodes; `xgate train submit --gateway` runs a small DP job (real SuperLink/SuperNodes, synthetic
data) while the refusals are exercised, then the officer API shows the job's audit trail and
`xgate audit verify-log` passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import tomli_w

from app.launcher import Supervisor
from client.sdk import GatewayClient, GatewayError
from tests.unit.training_support import job_body, prepare_gateway_dir, write_region_stores, write_training_policies

# Minutes of Flower processes; on a loaded 2-core CI box a job has taken over 300 s (the default).
pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=60), pytest.mark.timeout(900)]


@dataclass
class Gateway:
    url: str
    keys: dict[str, str]
    root: Path

    def client(self, label: str) -> GatewayClient:
        return GatewayClient(self.url, self.keys[label])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("training-gateway")
    policies = write_training_policies(root / "policies", cap=3.0)
    nodes = write_region_stores(root / "nodes", [250, 250])
    gw = root / "gateway"
    keys, section = prepare_gateway_dir(gw, policies)
    config = {
        "gateway": section,
        "training": {"nodes": [{"agency": a, "store": str(s), "ledger": str(led)} for a, s, led in nodes]},
    }
    (gw / "gateway.toml").write_text(tomli_w.dumps(config))
    with Supervisor(log_dir=root / "logs") as supervisor:
        child = supervisor.start("gateway", ["gateway", "serve", "--config", str(gw / "gateway.toml"), "--insecure"])
        yield Gateway(str(child.announcement["url"]), keys, root)


def _running_flower(home: Path) -> list[str]:
    """Names of the live Flower SuperLink/SuperNode processes started under `home`."""
    names = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        exe = Path(argv[1].decode()).name if len(argv) > 1 else ""
        if argv[1:3] == [b"-m", b"federated.supernode_process"]:
            exe = "flower-supernode"  # Flower's SuperNode behind xgate's short-poll entry point
        if exe in ("flower-superlink", "flower-supernode") and str(home).encode() in b" ".join(argv):
            names.append(exe)
    return names


def refusal(client: GatewayClient, body: dict[str, object]) -> GatewayError:
    with client, pytest.raises(GatewayError) as err:
        client.submit_training_job(body)
    return err.value


def refusal_when_the_slot_is_free(client: Callable[[str], GatewayClient], body: dict[str, object]) -> GatewayError:
    """A status says completed when the job's outcome is written; the worker frees the job slot after
    stopping the federation. Submissions in between are refused as busy (409) and retried here."""
    deadline = time.monotonic() + 60
    while (err := refusal(client("analyst"), body)).http_status == 409 and time.monotonic() < deadline:
        time.sleep(0.5)
    return err


def test_refusals(gateway: Gateway) -> None:
    r = httpx.post(f"{gateway.url}/v1/training/jobs", json=job_body("neg-0"))
    assert r.status_code == 401
    err = refusal(gateway.client("caseworker"), job_body("neg-1"))
    assert err.http_status == 403 and "no permit matched" in err.message
    err = refusal(gateway.client("analyst"), job_body("neg-2", purpose="dibao"))
    assert err.http_status == 403 and "Dataset::medical.claims_2025" in err.message
    err = refusal(gateway.client("analyst"), job_body("neg-3", legal_basis="SAR-2014-art-12"))
    assert err.http_status == 403 and "no permit matched" in err.message
    err = refusal(gateway.client("analyst"), job_body("neg-4", epsilon=5.0))  # cap 3
    assert err.http_status == 429 and err.code == "budget_exhausted" and "exhausted" in err.message
    body = job_body("neg-5")
    del body["legal_basis"]
    err = refusal(gateway.client("analyst"), body)
    assert err.http_status == 400 and err.message.startswith("legal_basis")
    err = refusal(gateway.client("analyst"), job_body("neg-6", rounds="many"))
    assert err.http_status == 400 and err.message.startswith("rounds")


def test_job_through_the_gateway_is_audited(gateway: Gateway, tmp_path: Path) -> None:
    job_file = tmp_path / "job.toml"
    job_file.write_text(tomli_w.dumps(job_body("it-gw-1", epsilon=1.0)))
    cli = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "train", "submit", "--job", str(job_file), "--gateway", gateway.url],
        env={**os.environ, "XGATE_API_KEY": gateway.keys["analyst"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with gateway.client("analyst") as analyst:
            deadline = time.monotonic() + 60
            while True:  # the CLI's submission has been accepted
                try:
                    status = analyst.training_job_status("it-gw-1")
                    break
                except GatewayError as exc:
                    assert exc.http_status == 404 and time.monotonic() < deadline
                    time.sleep(0.5)
            if status["state"] not in ("completed", "failed", "refused"):
                err = refusal(gateway.client("analyst"), job_body("it-gw-2"))
                assert err.http_status == 409 and err.code == "training_busy"
            output, _ = cli.communicate(timeout=600)
            assert cli.returncode == 0, output
            assert "accepted by the gateway" in output and "completed: AUC" in output
            final = analyst.training_job_status("it-gw-1")
        assert final["state"] == "completed" and final["rounds_done"] == 1
        assert final["gateway_decision"]["policy_ids"] == ["train-medical-claims"] and final["model_sha256"]
        assert {a: d["approved"] for a, d in final["decisions"].items()} == {"region0": True, "region1": True}
        # ε already spent: 1.0 of 3.0; another 2.5 would exceed the cap (once the worker has freed the
        # job slot: until then a submission is told to retry, 409)
        err = refusal_when_the_slot_is_free(gateway.client, job_body("it-gw-3", epsilon=2.5))
        assert err.http_status == 429
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)

    # The job ran on the SuperLink and SuperNodes the gateway started for its lifetime (before the job),
    # and they outlive it, waiting for the next one (reuse across jobs: tests/unit/test_local_link.py,
    # bench/training_startup.py).
    model = json.loads((gateway.root / "gateway" / "state" / "jobs" / "it-gw-1" / "model.json").read_text())
    link = model["flower"]
    assert link["mode"] == "long-lived" and link["job_on_link"] == 1
    # Node-level DP (the job's default unit): the nodes added the noise, not the gateway.
    assert model["dp"]["noise_added_by"] == "nodes" and model["dp"]["node_noise_sd"] > 0
    started = datetime.fromisoformat(link["started_at"]).replace(microsecond=0)
    assert started <= datetime.fromisoformat(final["submitted_at"])  # the gateway's, at its start
    home = gateway.root / "gateway" / "state" / "flower-local"
    assert sorted(_running_flower(home)) == ["flower-superlink", "flower-supernode", "flower-supernode"]

    officer = {"Authorization": f"Bearer {gateway.keys['officer']}"}
    entries = httpx.get(
        f"{gateway.url}/v1/audit/entries", params={"request_id": "it-gw-1", "limit": 1000}, headers=officer
    ).json()["entries"]
    kinds = [e["record"]["kind"] for e in entries]
    for expected in (
        "training_job_submitted", "training_job_approved", "training_node_approved", "training_run_started",
        "training_round_completed", "training_round_evaluated", "training_dp_spent", "training_job_completed",
    ):  # fmt: skip
        assert expected in kinds, kinds
    assert (
        kinds.index("training_job_submitted")
        < kinds.index("training_job_approved")
        < kinds.index("training_round_completed")
        < kinds.index("training_job_completed")
    )
    approved = next(e["record"] for e in entries if e["record"]["kind"] == "training_job_approved")
    assert approved["decision"] == "allow" and approved["policy_ids"] == ["train-medical-claims"]
    assert len(approved["policy_set_hash"]) == 64 and approved["actor"]["user"] == "an-liu"
    done = next(e["record"] for e in entries if e["record"]["kind"] == "training_job_completed")
    assert done["digests"]["model"] == final["model_sha256"]
    rounds = httpx.get(
        f"{gateway.url}/v1/audit/entries", params={"kind": "training_round_completed"}, headers=officer
    ).json()["entries"]
    assert [e["record"]["request_id"] for e in rounds] == ["it-gw-1"]
    assert sorted(rounds[0]["record"]["metadata"]["agencies"]) == ["region0", "region1"]
    refused = httpx.get(
        f"{gateway.url}/v1/audit/entries", params={"kind": "training_job_refused"}, headers=officer
    ).json()["entries"]
    assert {e["record"]["metadata"]["stage"] for e in refused} >= {"policy", "budget", "capacity"}

    published = httpx.post(f"{gateway.url}/v1/audit/checkpoints/cosign", headers=officer)
    assert published.status_code == 200
    gw = gateway.root / "gateway"
    verify = subprocess.run(
        [sys.executable, "-m", "app.cli", "audit", "verify-log", "--db", str(gw / "audit.sqlite"),
         "--key", str(gw / "audit.pub.pem")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
