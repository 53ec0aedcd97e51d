"""Deployment across machines, on loopback: each agency runs `xgate node supernode --config node.toml`
(its own process, its own store, key and policy set); the coordinator's long-lived SuperLink
(federated.remote.RemoteLink) knows only their CA-certified public keys. The SuperLink listens on
127.0.0.1 on a port of its own; the agencies dial the Fleet gate on the fixed port, which forwards
Fleet API calls only (what else reaches it from outside: test_control_api_is_not_reachable_from_outside).

One SuperLink serves every test of the module (Flower's normal deployment: jobs are submitted to a
running SuperLink); the last test replaces it with a new SuperLink process on the same port and
the running SuperNode wrappers rejoin it.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tomli_w
from flwr.common import Array, ConfigRecord

from crypto import flower_keys as fk
from crypto import pki
from federated import datasets, node_keys
from federated.admission import require_approval
from federated.deployment import BIN, flwr_env, free_port
from federated.jobs import JobSpec
from federated.remote import GATE, RemoteLink, RemoteNode
from federated.remote_runner import RemoteMode
from federated.runner import run_job
from tests.integration.fleet_capture import (
    CapturingGate,
    capturing_gate,
    findings,
    run_needles,
    text_needles,
    value_needles,
)
from tests.integration.remote_support import Site, flower_processes, start_site, synthetic_catalogue, write_node_toml
from tests.unit.training_support import RENAME, job_body, write_region_stores, write_training_policies
from xgate.errors import NodeUnavailable

# Minutes of Flower processes; on a loaded 2-core CI box a job has taken over 300 s (the default).
pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=330), pytest.mark.timeout(900)]
RUNNING = ["region0", "region1"]  # their SuperNodes run from the start
SILENT = "region2"  # registered at the coordinator, its SuperNode never starts
IMPOSTOR = "region3"  # its SuperNode runs with a key the coordinator never registered
REGION_SIZES = [250, 300, 60, 60]  # write_region_stores' disjoint slices of one population (seed 11)


@dataclass
class World:
    root: Path
    security: fk.FlowerSecurity
    port: int
    link: RemoteLink
    capture: CapturingGate  # what crossed the Fleet API, both ways
    capture_port: int  # where every agency's SuperNode dials (the capture forwards to `port`)
    sites: dict[str, Site] = field(default_factory=dict)

    def nodes(self, *agencies: str) -> list[RemoteNode]:
        return [self.sites[a].node for a in agencies]

    def mode(self, connect_timeout_s: float = 60.0) -> RemoteMode:
        return RemoteMode(self.link, synthetic_catalogue(), max_weight=400, connect_timeout_s=connect_timeout_s)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The coordinator's SuperLink behind its Fleet gate on `port`; every agency's SuperNode dials a
    capturing gate in front of it (tests/integration/fleet_capture.py), which keeps what crosses."""
    root = tmp_path_factory.mktemp("fedremote")
    ca = root / "ca"
    pki.init_ca(ca, "test federation CA")
    link_pki = pki.issue(ca, "flower-superlink", "gateway", root / "link-pki", days=1)  # SAN 127.0.0.1
    security = fk.FlowerSecurity(ca / pki.CA_CERT, link_pki.cert_path, link_pki.key_path, crl=ca / pki.CRL)
    policies = write_training_policies(root / "policies")
    port = free_port()
    with capturing_gate(port, security) as (capture_port, capture):
        w = World(root, security, port, RemoteLink(root / "link", security, "127.0.0.1", port), capture, capture_port)
        yield from _run_world(w, write_region_stores(root / "sites", REGION_SIZES), policies)
    assert flower_processes(root) == [], "a Flower process outlived its wrapper or the SuperLink"


def _run_world(w: World, stores: list[tuple[str, Path, Path]], policies: Path) -> Iterator[World]:
    ca, root, security = w.security.ca_cert.parent, w.root, w.security
    for agency, store, ledger in stores:
        key = fk.certify_supernode_key(ca, agency, store.parent / "keys", days=1)
        run_key, run_cert = key.private_key, key.certificate
        if agency == IMPOSTOR:  # a certified key of its own, which the coordinator was never given
            other = fk.certify_supernode_key(ca, agency, store.parent / "other-keys", days=1)
            run_key, run_cert = other.private_key, other.certificate
        config = write_node_toml(
            store.parent, agency, store, ledger, w.capture_port,
            ca_cert=str(security.ca_cert), supernode_key=str(run_key), supernode_cert=str(run_cert),
            crl=str(security.crl), policy_dir=str(policies),
        )  # fmt: skip
        w.sites[agency] = Site(agency, config, store, ledger, RemoteNode(agency, key.public_key, key.certificate))
    try:
        w.link.start()
        w.link.register(w.nodes(*RUNNING, SILENT, IMPOSTOR))
        for agency in RUNNING:
            start_site(w.sites[agency])
        yield w
    finally:
        for site in w.sites.values():
            if site.proc is not None and site.proc.poll() is None:
                site.proc.send_signal(signal.SIGTERM)
        for site in w.sites.values():
            if site.proc is not None:
                try:
                    site.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    site.proc.kill()
        w.link.close()
    assert w.link.leftover_processes() == []
    deadline = time.monotonic() + 10
    while flower_processes(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    # Wrappers exit cleanly on SIGTERM (forwarded to the SuperNode's process group).
    assert all(s.proc.returncode == 0 for s in w.sites.values() if s.proc is not None)


def remote_job(job_id: str, **overrides: Any) -> JobSpec:
    body = {**job_body(job_id, **overrides), "requester": "an-liu"}  # an hrss analyst (train-medical-claims)
    return JobSpec.model_validate(body)


def test_secagg_job_on_agencies_own_supernodes(world: World) -> None:
    job = remote_job("it-remote-1", secagg=True, min_nodes=2, round_timeout_s=60, job_timeout_s=240)
    events: list[dict[str, Any]] = []
    before = len(world.capture.bodies)
    res = run_job(job, world.nodes(*RUNNING), job_dir=world.root / "job1", remote=world.mode(), on_event=events.append)
    crossed = world.capture.bodies[before:]
    assert res.status == "completed" and res.model_sha256 and 0.0 <= res.evaluation["auc"] <= 1.0

    registered = world.link.fed.registered
    run = next(e for e in events if e["event"] == "run_started")
    assert run["nodes"] == RUNNING
    done = next(e for e in events if e["event"] == "round_completed")
    assert sorted(done["participants"]) == sorted(registered[a] for a in RUNNING)
    assert sorted(done["agencies"]) == RUNNING
    # No coordinator-side admission: each node decided itself and recorded it in its own ledger.
    assert not [e for e in events if e["event"] in ("job_approved", "job_refused")]
    for agency in RUNNING:
        require_approval(world.sites[agency].ledger, job)

    meta = json.loads((world.root / "job1" / "model.json").read_text())
    assert meta["data_digests_source"] == "node" and meta["decisions"] == {}
    assert meta["data_digests"] == {
        a: node_keys.data_digest(world.sites[a].store, world.sites[a].ledger, job.elements()) for a in RUNNING
    }  # what each node attested equals its store's digest under its own key
    assert len(set(meta["data_digests"].values())) == len(RUNNING)
    config = json.loads(json.dumps(meta["job"]))
    assert config["job_id"] == "it-remote-1"

    # All of it went through the gate: the SuperLink listens elsewhere, and the gate saw each node arrive.
    assert world.link.fed.address != world.link.address == f"127.0.0.1:{world.port}"
    gate = [json.loads(line) for line in gate_log(world).splitlines() if line.startswith("{")]
    arrivals = {e["node"] for e in gate if e["event"] == "fleet_gate_forwarded" and e["status"] == 200}
    assert len(arrivals) == len(RUNNING) and "-" not in arrivals  # activate-node, one key digest per node

    # What crossed the Fleet API (THREAT_MODEL F4): each node's attested digest, readable, so the
    # capture saw what the nodes sent; and none of their rows, raw or encoded, nor a pseudonym.
    for agency in RUNNING:
        assert any(meta["data_digests"][agency].encode() in b.data for b in crossed if b.direction == "up")
    subjects, cols, _ = datasets.synthetic_population(sum(REGION_SIZES), seed=11)
    starts = np.cumsum([0, *REGION_SIZES])
    holds = {a: (list(RENAME), int(starts[k]), int(starts[k + 1])) for k, a in enumerate(RUNNING)}
    assert findings(crossed, _row_needles(subjects, cols, holds)) == []


def gate_log(world: World) -> str:
    return world.link.fed.procs[GATE].log_path.read_text(errors="replace")


def outside_cli(home: Path, address: str, ca: Path, *args: str) -> dict[str, Any]:
    """The `flwr` CLI as an agency host could run it: the gate's address and the federation CA."""
    home.mkdir(parents=True, exist_ok=True)
    conn = {"address": address, "root-certificates": str(ca)}
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": "xgate", "xgate": conn}}))
    out = subprocess.run(
        [str(BIN / "flwr"), *args, "xgate", "--format", "json"],
        capture_output=True, text=True, timeout=60, env=flwr_env(home), check=False,
    )  # fmt: skip
    return dict(json.loads(out.stdout[out.stdout.index("{") :]))


def test_control_api_is_not_reachable_from_outside(world: World) -> None:
    """From the gate's address, with the CA every agency holds: no Control or Runtime API call reaches
    the SuperLink (refused at the gate, logged), nothing gets registered; Fleet calls still need a key."""
    link_log = world.link.fed.procs["superlink"].log_path
    nodes_before = world.link.statuses()
    calls_before = link_log.read_text(errors="replace").count('"POST /v1/control/')
    intruder = fk.generate_supernode_key(world.root / "intruder", "intruder")  # a valid key nobody registered
    home = world.root / "outside-cli"
    register = outside_cli(home, world.link.address, world.security.ca_cert, "supernode", "register",
                           str(intruder.public_key))  # fmt: skip
    assert register["success"] is False and "404 Not Found" in str(register["error-message"])
    listing = outside_cli(home, world.link.address, world.security.ca_cert, "ls")
    assert listing["success"] is False and "404 Not Found" in str(listing["error-message"])

    with httpx.Client(verify=ssl.create_default_context(cafile=str(world.security.ca_cert)), timeout=30) as http:
        base = f"https://{world.link.address}"
        for path in (
            "/v1/control/list-runs",
            "/v1/control/start-run",
            "/v1/runtime/acquire-task",
            "//v1/control/list-nodes",
        ):
            res = http.post(base + path, content=b"\x00", headers={"content-type": "application/protobuf"})
            assert res.status_code == 404, path
        assert http.get(base + "/docs").status_code == 404
        assert http.get(base + "/v1/fleet/pull-messages").status_code == 405
        # A Fleet path passes the gate, and the SuperLink's own SuperNode authentication refuses it.
        res = http.post(base + "/v1/fleet/pull-messages", content=b"", headers={"content-type": "application/protobuf"})
        assert res.status_code == 401 and "Invalid SuperNode authentication" in res.text

    refused = [json.loads(line) for line in gate_log(world).splitlines() if "fleet_gate_refused" in line]
    assert {e["path"] for e in refused} >= {"/v1/control/register-node", "/v1/control/list-runs", "/docs"}
    assert link_log.read_text(errors="replace").count('"POST /v1/control/') == calls_before
    assert "/docs" not in link_log.read_text(errors="replace")
    # The intruder's key was not registered: the same nodes (a node may come online meanwhile).
    assert world.link.statuses().keys() == nodes_before.keys()


def test_supernodes_that_never_join_are_named(world: World) -> None:
    """SILENT is registered but its SuperNode never starts; IMPOSTOR's SuperNode runs, with a key the
    coordinator never registered, so the SuperLink refuses it. One job needs both (and region0)."""
    impostor = world.sites[IMPOSTOR]
    start_site(impostor)
    job = remote_job("it-remote-2", min_nodes=2)
    with pytest.raises(NodeUnavailable) as err:
        run_job(job, world.nodes("region0", SILENT, IMPOSTOR), job_dir=world.root / "job2", remote=world.mode(8.0))
    assert err.value.details["missing"] == [SILENT, IMPOSTOR]  # region0 is online
    assert f"{SILENT} (registered, never connected), {IMPOSTOR} (registered, never connected)" in err.value.message
    status = json.loads((world.root / "job2" / "status.json").read_text())
    assert status["state"] == "failed" and SILENT in status["reason"] and IMPOSTOR in status["reason"]
    assert not (world.root / "job2" / "app").exists()  # nothing was submitted

    # The impostor did try: the SuperLink refused its key, and its wrapper keeps retrying.
    link_log = world.link.fed.procs["superlink"].log_path
    deadline = time.monotonic() + 90
    while "No SuperNode found with the given public key" not in link_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the SuperLink never saw the impostor's key"
        time.sleep(0.5)
    assert world.link.statuses()[world.link.fed.registered[IMPOSTOR]] == "registered"  # never activated
    # The SuperLink logs the refusal before the impostor's SuperNode process exits on it; wait for
    # the wrapper to see that exit (and restart) rather than racing it with the SIGTERM.
    deadline = time.monotonic() + 90
    while "supernode_exited" not in impostor.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the impostor's SuperNode never exited on the refusal"
        time.sleep(0.5)
    assert impostor.proc is not None and impostor.proc.poll() is None
    impostor.proc.send_signal(signal.SIGTERM)  # forwarded to its SuperNode's process group
    assert impostor.proc.wait(timeout=30) == 0
    wrapper_log = impostor.log.read_text(errors="replace")
    assert "Exit Code: 305" in wrapper_log and "supernode_exited" in wrapper_log  # refused, restarted
    assert "supernode_stopped" in wrapper_log


def test_vertical_job_on_agencies_own_supernodes(world: World) -> None:
    """Vertical split learning across two more agencies' own SuperNodes: same people, different
    columns; the label stays at region4. Aligned by pseudonym at the nodes, digests node-attested.
    Their SuperNodes dial a capturing gate in front of the real one, which keeps every body that
    crosses the Fleet API both ways: no raw or encoded value, no label column and no pseudonym is
    in any of them (THREAT_MODEL F4), though region5 holds planted values that stand out."""
    subjects, cols, _ = datasets.synthetic_population(500, seed=5)
    split = {
        "region4": ["civil.age", "civil.disabled", "civil.region", "tax.label"],
        "region5": ["tax.income", "hrss.months", "health.visits"],
    }
    windows = {"region4": (0, 450), "region5": (50, 500)}  # 400 people in common
    canaries = np.array([1_234_567 + 1_111 * i for i in range(8)], dtype=np.float64)
    cols["tax.income"].values[50:58] = canaries  # region5's first rows, all in the intersection
    security = world.security
    ca = security.ca_cert.parent
    before = len(world.capture.bodies)
    for agency, elements in split.items():
        lo, hi = windows[agency]
        store = world.root / "sites" / agency / "store.sqlite"
        part = {e: cols[e] for e in elements}
        columns = {RENAME[e]: datasets.Column(c.values[lo:hi], c.type, c.min, c.max) for e, c in part.items()}
        datasets.write_store(store, f"claims_{agency}", subjects[lo:hi], columns)
        key = fk.certify_supernode_key(ca, agency, store.parent / "keys", days=1)
        ledger = store.parent / "ledger.sqlite"
        config = write_node_toml(
            store.parent, agency, store, ledger, world.capture_port,
            ca_cert=str(security.ca_cert), supernode_key=str(key.private_key), supernode_cert=str(key.certificate),
            crl=str(security.crl), policy_dir=str(world.root / "policies"),
        )  # fmt: skip
        world.sites[agency] = Site(agency, config, store, ledger, RemoteNode(agency, key.public_key, key.certificate))
        start_site(world.sites[agency])
    job = remote_job("it-remote-v", mode="vertical", label_holder="region4", rounds=1, min_nodes=2)
    events: list[dict[str, Any]] = []
    res = run_job(job, world.nodes(*split), job_dir=world.root / "jobv", remote=world.mode(), on_event=events.append)
    for agency in split:
        proc = world.sites[agency].proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)  # spare the shared CPUs for the tests that follow
        assert proc.wait(timeout=30) == 0
    crossed = world.capture.bodies[before:]
    assert res.status == "completed" and res.model_sha256
    aligned = next(e for e in events if e["event"] == "aligned")
    assert aligned["subjects"] == 400 and sorted(aligned["nodes"]) == sorted(split)
    assert aligned["keys_checked"] is True  # each agency verified its peers' signed PSI agreement keys
    summary = json.loads((world.root / "jobv" / "server-summary.json").read_text())
    assert set(summary["model_parts"]) == {"region5", "top@region4"}  # the model stays split
    meta = json.loads((world.root / "jobv" / "model.json").read_text())
    assert meta["data_digests"] == {
        a: node_keys.data_digest(world.sites[a].store, world.sites[a].ledger, job.elements()) for a in split
    }
    for agency in split:
        require_approval(world.sites[agency].ledger, job)  # each node admitted the job itself

    # The whole job went through the capture, arrays and all (else the search below proves nothing).
    routes = {(b.direction, b.route) for b in crossed}
    assert {("up", "/v1/fleet/push-object"), ("down", "/v1/fleet/pull-object")} <= routes
    assert any(b"ArrayChunk" in b.data for b in crossed if b.direction == "up")
    assert sum(len(b.data) for b in crossed) > 100_000
    # ... and what region5 sent is readable in it: the digest of its model part, as it reported it.
    assert any(summary["model_parts"]["region5"].encode() in b.data for b in crossed if b.direction == "up")
    holds = {agency: (elements, *windows[agency]) for agency, elements in split.items()}
    needles = _canary_needles(canaries) | _row_needles(subjects, cols, holds)
    assert findings(crossed, needles) == []
    # Positive control: what a node would send if it shipped its rows, in Flower's own encoding.
    shipped = _flower_bytes(cols["tax.income"].values[50:500], subjects[50:500], canaries)
    found = set(findings(shipped, needles))
    assert {"claims canary[0] int64", "claims canary[0] encoded float32", f"pseudonym {subjects[50]}"} <= found
    assert {"region5 tax.income run <i8", "region5 tax.income run sint list"} <= found


def _canary_needles(canaries: np.ndarray) -> dict[str, bytes]:
    """The planted claims values raw, and as the job encodes them (log-scaled: a wide int)."""
    claims = {e.id: e for e in synthetic_catalogue().elements}[RENAME["tax.income"]]
    encoded = np.log1p(canaries - claims.min) / np.log1p(claims.max - claims.min)
    needles = value_needles("claims canary", canaries)
    needles |= {f"claims canary[{i}] encoded {name}": np.asarray(v, dt).tobytes() for i, v in enumerate(encoded)
                for name, dt in (("float64", "<f8"), ("float32", "<f4"))}  # fmt: skip
    return needles


def _row_needles(
    subjects: list[str], cols: dict[str, datasets.Column], holds: dict[str, tuple[list[str], int, int]]
) -> dict[str, bytes]:
    """Each site's columns in row order, raw and encoded (`holds`: agency -> elements, first and
    past-last row of the population), and every pseudonym it holds, as text and as bytes."""
    catalogue = {e.id: e for e in synthetic_catalogue().elements}
    needles: dict[str, bytes] = {}
    for agency, (elements, lo, hi) in holds.items():
        for element in elements:
            raw = np.asarray(cols[element].values[lo:hi], dtype=np.float64)
            values, counts = np.unique(raw, return_counts=True)
            if len(values) <= 2 and counts.min() < 5:
                continue  # a run of nearly one value could match any padding
            needles |= run_needles(f"{agency} {element}", raw)
            info = catalogue[RENAME[element]]
            if info.type != "category":  # one-hot columns are runs of 0/1 that any sparse array holds
                span = info.max - info.min
                scaled = np.log1p(raw - info.min) / np.log1p(span) if span > 1000 else (raw - info.min) / span
                needles |= {
                    f"{agency} {element} encoded run {dt}": scaled.astype(dt).tobytes() for dt in ("<f8", "<f4")
                }
        needles |= text_needles("pseudonym", subjects[lo:hi])
        needles |= {f"pseudonym bytes {s}": bytes.fromhex(s) for s in subjects[lo:hi]}
    return needles


def _flower_bytes(claims: np.ndarray, subjects: list[str], canaries: np.ndarray) -> list[bytes]:
    """A node's claims column, its planted values encoded, and its pseudonyms, as Flower objects."""
    arrays = [Array(claims.astype(np.int64)), Array((np.log1p(canaries) / np.log1p(2_000_000)).astype(np.float32))]
    out = [chunk.deflate() for a in arrays for chunk in (a.children or {}).values()]
    return [*out, ConfigRecord({"subjects": subjects, "claims": [int(v) for v in claims]}).deflate()]


def test_supernode_rejoins_a_restarted_superlink(world: World) -> None:
    stopped = world.sites["region1"].proc
    assert stopped is not None
    stopped.send_signal(signal.SIGTERM)  # one wrapper is enough to watch (spares the shared CPUs)
    assert stopped.wait(timeout=30) == 0
    world.link.close()
    assert world.link.leftover_processes() == []
    # A new SuperLink process on the same address, fresh state: region0's key gets a new node id.
    old_id = world.link.fed.registered["region0"]
    world.link = RemoteLink(world.root / "link2", world.security, "127.0.0.1", world.port).start()
    ids = world.link.register(world.nodes("region0"))
    assert ids["region0"] != old_id
    world.link.wait_online({ids["region0"]: "region0"}, timeout=90)
    proc = world.sites["region0"].proc
    assert proc is not None and proc.poll() is None
    log = world.sites["region0"].log.read_text(errors="replace")
    assert "supernode_exited" in log and log.count("supernode_started") >= 2  # 401 for the old id, restarted


def test_bad_training_table_exits_with_one_line(world: World, tmp_path: Path) -> None:
    """The real command, as an agency would run it (more refusals: tests/unit/test_supernode_site.py)."""
    cfg = tomllib.loads(world.sites["region0"].config.read_text())
    cfg["node"]["store"] = str(world.sites["region0"].store)
    cfg["training"].update(ledger=str(world.sites["region0"].ledger), supernode_key=str(tmp_path / "missing.key"))
    (tmp_path / "node.toml").write_text(tomli_w.dumps(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "node", "supernode", "--config", str(tmp_path / "node.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: [training] supernode_key: file not found"), out.stderr
