"""A federation across hosts, from the README alone: docs/deploy_steps.sh run as written.

Each agency (tax, hrss, civil_affairs, household), the gateway and the client get their own network
namespace on a bridge, an address in 10.231.N.0/24, a host name in their /etc/hosts and a directory
holding only their own files; the CA runs in a directory of its own (it is offline). Files travel
only through `scp` (a stand-in that copies between the hosts' directories). After the 低保 check of
300 applicants, a remote vertical training job (the gateway's SuperLink in its namespace, the tax and
hrss SuperNodes in theirs, submitted by the client with `xgate train submit`: completed, model and
report at the gateway with both agencies' data digests, each agency's own admission in its ledger,
the job on the gateway's audit log) and every node's renewal of its certificate and keys with all
services running (the check after it passes with the same verdicts; each node logged
`signing_key_reloaded`), the tax node's link is taken down (the check fails naming tax; the gateway's
service log records `node_failed` with the reason) and brought up again (readiness returns by
itself, the next check passes, `node_recovered` is logged). Last, the policy sets of the running
gateway and tax node are tampered with, unsigned, replayed and rolled back on disk (each refused,
`policy_reload_rejected` with the reason, checks still pass) and a newer signed bundle is taken by
both without a restart. Everything is removed at the end, also on failure.

Runs when the test runs as root with `ip netns`; otherwise the terminal summary says loudly that it
did not run (tests/deploy/summary.py).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.deploy import netns
from tests.deploy.steps import AGENCIES, Block, parse
from tests.deploy.summary import BANNER

# 11 min on the shared 2-core box at load ~14 (a training job and the policy attacks came on top of
# the check and the renewal), 7 before them: far above the suite's 300 s default.
pytestmark = [pytest.mark.deploy, pytest.mark.slow(seconds=420), pytest.mark.timeout(1500)]  # the longest: first
REASON = netns.available()
READY_S = 120.0
NAMES = {"ca": "ca", "gateway": "gw.xgate.test", **AGENCIES, "client": "client.xgate.test"}
CHECK = (
    "XGATE_API_KEY=$(cat cw-zhou.apikey) xgate check --program dibao --subjects {subjects} --purpose dibao "
    "--legal-basis SAR-2014-art-12 --case-id {case} --approval-ref $(cat approval.ref) "
    "--gateway https://gw.xgate.test:8443 --ca ca.cert.pem --pseudonym-key pseudonym.key --key-file requester.key "
    "--signing-key cw-zhou.sign.key"
)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[netns.Network]:
    if REASON is not None:
        pytest.skip(f"{BANNER}: {REASON}")
    net = netns.Network(tmp_path)
    try:
        net.build(NAMES)
        yield net
    finally:
        leftovers = net.close()
        assert not leftovers, f"could not remove {leftovers}"


def _host(block: Block, agency: str | None) -> str:
    return agency if block.host == "agency" and agency else block.host


def _wait_ready(log: Path, proc: subprocess.Popen[bytes], what: str, event: str = "ready") -> dict[str, object]:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"event": "{event}"' in line:
                return dict(json.loads(line))
        if proc.poll() is not None:
            pytest.fail(f"{what} exited before it was ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{what} not ready within {READY_S:.0f} s:\n{log.read_text()[-3000:]}")


def _run_block(net: netns.Network, block: Block, outputs: dict[str, str]) -> None:
    runs: list[tuple[str | None, dict[str, str]]] = [(None, {})]
    if block.per_agency:
        runs = [(a, {"AGENCY": a, "NODE": fqdn}) for a, fqdn in block.agencies.items()]
    logs = net.root / "logs"
    logs.mkdir(exist_ok=True)
    if block.service:
        # A SuperNode wrapper has no port of its own: it is up once it started `flower-supernode`.
        kind, event = ("supernode", "supernode_started") if "node supernode" in block.script else ("", "ready")
        name = {a: f"{_host(block, a)}{'-' + kind if kind else ''}" for a, _ in runs}
        started = [(a, net.start(_host(block, a), block.script, logs / f"{name[a]}.log", env)) for a, env in runs]
        for agency, proc in started:
            _wait_ready(logs / f"{name[agency]}.log", proc, f"{block.host} {agency or ''} {kind}", event)
        return

    def one(run: tuple[str | None, dict[str, str]]) -> None:
        agency, env = run
        result = net.run(_host(block, agency), block.script, env)
        assert result.returncode == 0, (
            f"step on {_host(block, agency)} failed ({result.returncode}):\n{block.script}\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-3000:]}"
        )
        outputs[_host(block, agency)] = result.stdout

    if block.host == "ca":  # one CA directory: its index and directory are written in turn
        for run in runs:
            one(run)
    else:
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            list(pool.map(one, runs))


def _events(log: Path, event: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                found.append(record)
    return found


def _readyz(net: netns.Network) -> tuple[int, object]:
    """The gateway's readiness as the client host sees it (by name, verified against the CA)."""
    probe = (
        "python -c \"import httpx, json; r = httpx.get('https://gw.xgate.test:8443/readyz', "
        "verify='ca.cert.pem', timeout=30); print(json.dumps([r.status_code, r.json()]))\""
    )
    done = net.run("client", probe, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    status, body = json.loads(done.stdout.strip().splitlines()[-1])
    return int(status), body


def _unsigned_job_is_refused(net: netns.Network) -> None:
    """The deployment requires signed training jobs (THREAT_MODEL F22): the analyst's job without
    its signature, under a new id, is refused at submission; the signed one above ran."""
    unsigned = net.run(
        "client",
        "sed 's/risk-2026-01/risk-2026-unsigned/' risk-job.toml > unsigned-job.toml && "
        "XGATE_API_KEY=$(cat an-hrss.apikey) xgate train submit --job unsigned-job.toml "
        "--gateway https://gw.xgate.test:8443 --gateway-ca ca.cert.pem",
    )
    assert unsigned.returncode != 0 and "not signed" in unsigned.stderr + unsigned.stdout, unsigned


def test_deployment_across_hosts_from_the_readme(network: netns.Network) -> None:
    t0 = time.monotonic()
    outputs: dict[str, str] = {}
    first_check_s = train_s = 0.0
    reports, trained = [], ""
    for block in parse():
        t_block = time.monotonic()
        _run_block(network, block, outputs)
        if block.host == "client" and any(" xgate check " in c for c in block.commands):
            first_check_s = first_check_s or time.monotonic() - t0
            reports.append(outputs["client"])
        if block.host == "client" and any(" xgate train submit " in c for c in block.commands):
            trained, train_s = outputs["client"], time.monotonic() - t_block
    assert len(reports) == 2  # after the deployment, and again after every node renewed its keys
    _assert_trained_across_hosts(network, trained)
    for out in reports:
        assert out.splitlines()[-1].startswith("request ") and " view): " in out.splitlines()[-1], out[-2000:]
        rows = [ln for ln in out.splitlines()[1:-1] if ln.strip()]
        assert len(rows) == 300  # one verdict line per applicant
    assert reports[0].splitlines()[-1].split(": ", 1)[1] == reports[1].splitlines()[-1].split(": ", 1)[1]
    # The renewal took effect without restarting anyone: the same service processes, new keys in use.
    assert all(proc.poll() is None for proc in network.services)
    for agency in AGENCIES:
        reloaded = _events(network.root / "logs" / f"{agency}.log", "signing_key_reloaded")
        assert reloaded, f"{agency} did not switch to its renewed signing key"

    client = network.hosts["client"].home
    lines = (client / "applicants.csv").read_text().splitlines()
    for name, part in (("subset-a.csv", lines[1:11]), ("subset-b.csv", lines[11:21])):
        (client / name).write_text("\n".join([lines[0], *part]) + "\n")
    gw_log = network.root / "logs" / "gateway.log"

    # One agency's link goes down: the check fails naming the agency; the service log says why.
    network.link("tax", up=False)
    t_down = time.monotonic()
    failed = network.run("client", CHECK.format(subjects="subset-a.csv", case="C-2026-002"))
    assert failed.returncode != 0
    assert "tax" in failed.stderr and ("node_" in failed.stderr or "unreachable" in failed.stderr
                                       or "deadline" in failed.stderr), failed.stderr  # fmt: skip
    node_failed = [e for e in _events(gw_log, "node_failed") if e.get("agency") == "tax"]
    assert node_failed and node_failed[0]["reason"], gw_log.read_text()[-3000:]
    assert _readyz(network)[0] == 503
    down_s = time.monotonic() - t_down

    # ... and up again: readiness comes back by itself, the next check passes, the log says so.
    network.link("tax", up=True)
    deadline = time.monotonic() + 120
    while (ready := _readyz(network))[0] != 200:
        assert time.monotonic() < deadline, ready[1]
        time.sleep(1)
    passed = network.run("client", CHECK.format(subjects="subset-b.csv", case="C-2026-003"))
    assert passed.returncode == 0, passed.stderr[-2000:]
    assert "request " in passed.stdout.splitlines()[-1]
    recovered = [e for e in _events(gw_log, "node_recovered") if e.get("agency") == "tax"]
    assert recovered, gw_log.read_text()[-3000:]
    t_policy = time.monotonic()
    _unsigned_job_is_refused(network)
    _policy_attacks_while_running(network)
    _assert_witnessed(network)
    timings = {"first_check_s": round(first_check_s, 1), "train_job_s": round(train_s, 1),
               "link_down_s": round(down_s, 1), "policy_attacks_s": round(time.monotonic() - t_policy, 1),
               "total_s": round(time.monotonic() - t0, 1)}  # fmt: skip
    print(f"deployment across hosts: {json.dumps(timings)}; failure seen as: {node_failed[0]['reason']}")  # noqa: T201


JOB = "risk-2026-01"  # the job the README's client submits


def _assert_witnessed(net: netns.Network) -> None:
    """The gateway's log is witnessed as the README deploys it (before, the steps handed out no audit
    keys and nobody witnessed): a checkpoint cosigned by every agency comes within two of the
    gateway's 60 s checkpoint rounds (one may have fallen while the tax link was down), and an
    officer's verification with the agencies' keys passes, every cosignature from a known witness."""
    db = net.hosts["gateway"].home / "data" / "audit.sqlite"
    everyone = {f"xgate.node.{a}/witness" for a in AGENCIES}
    deadline, witnesses = time.monotonic() + 150, set()
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT checkpoint_id, witness FROM cosignatures").fetchall()
        by_checkpoint: dict[int, set[str]] = {}
        for checkpoint, witness in rows:
            by_checkpoint.setdefault(int(checkpoint), set()).add(str(witness))
        witnesses = max(by_checkpoint.values(), key=len, default=set())
        if witnesses == everyone:
            break
        time.sleep(2)
    assert witnesses == everyone, witnesses
    named = " ".join(f"--witness xgate.node.{a}/witness=ca/witness-{a}.pub.pem" for a in AGENCIES)
    verified = net.run(
        "gateway", f"xgate audit verify-log --db data/audit.sqlite --key keys/audit.pub.pem {named} --quorum 1"
    )
    assert verified.returncode == 0 and " 0 from unknown witnesses" in verified.stdout, (
        verified.stdout + verified.stderr
    )


def _assert_trained_across_hosts(net: netns.Network, out: str) -> None:
    """The remote vertical job ran on the tax and hrss SuperNodes: the client saw it complete, the
    gateway holds its model and report (not the agencies' data), each agency decided admission in its
    own ledger, and the gateway's audit log records the job from submission to completion."""
    assert f"job {JOB} completed: AUC " in out, out[-2000:]
    gw = net.hosts["gateway"].home
    job_dir = gw / "data" / "state" / "jobs" / JOB
    model = json.loads((job_dir / "model.json").read_text())
    assert sorted(model["data_digests"]) == ["hrss", "tax"] and model["data_digests_source"] == "node"
    report = json.loads((job_dir / "report.json").read_text())
    assert report["evaluation"]["auc"] > 0.5, report["evaluation"]  # better than chance on held-out rows
    assert not list((gw / "data").rglob("store.sqlite"))  # the gateway never held an agency's store
    for agency in ("tax", "hrss"):
        ledger = net.hosts[agency].home / "data" / "ledger.sqlite"
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
            (approved,) = conn.execute("SELECT approved FROM decisions WHERE job_id = ?", (JOB,)).fetchone()
        assert approved == 1, f"{agency} did not admit {JOB} itself"
    query = net.run("gateway", f"xgate audit query --db data/audit.sqlite --request-id {JOB} --format json")
    assert query.returncode == 0, query.stderr[-2000:]
    kinds = {str(row.get("kind")) for row in json.loads(query.stdout)}
    for kind in ("training_job_submitted", "training_job_approved", "training_round_completed",
                 "training_job_completed"):  # fmt: skip
        assert kind in kinds, (kind, sorted(kinds))


def _wait_event(log: Path, event: str, after: int, error: str = "", timeout_s: float = 30) -> dict[str, object]:
    """The first `event` in `log` beyond its first `after` such events (whose `error` holds `error`)."""
    deadline = time.monotonic() + timeout_s
    while not (found := [e for e in _events(log, event)[after:] if error in str(e.get("error", ""))]):
        assert time.monotonic() < deadline, f"no {event} {error!r} in {log.name}:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    return found[0]


def _policy_attacks_while_running(net: netns.Network) -> None:
    """The policy sets of the running gateway and tax node are replaced on disk: tampered, unsigned,
    the same and an older bundle are refused (`policy_reload_rejected` naming why; checks keep passing
    under the version in force), and a newer CA-signed bundle is taken by both without a restart."""
    logs = net.root / "logs"
    parties = {"gateway": logs / "gateway.log", "tax": logs / "tax.log"}
    v1 = {h: net.root / f"{h}-policies-v1" for h in parties}
    for host in parties:
        shutil.copytree(net.hosts[host].home / "policies", v1[host])

    def count(event: str) -> dict[str, int]:
        return {host: len(_events(log, event)) for host, log in parties.items()}

    def rejected(seen: dict[str, int], why: str) -> None:
        """Each party logged a refusal naming `why` since `seen`, with the version it keeps in force."""
        for host, log in parties.items():
            refusal = _wait_event(log, "policy_reload_rejected", seen[host], why)
            assert refusal["bundle_version"] in (1, 2) and refusal["in_force"], (host, refusal)

    client = net.hosts["client"].home
    lines = (client / "applicants.csv").read_text().splitlines()

    def checked(n: int) -> None:
        """A check of 5 applicants not checked since the deployment (each may be checked 3 times in 30
        days): with the edited agreement in force, tax would refuse it."""
        (client / f"policy-{n}.csv").write_text("\n".join([lines[0], *lines[21 + 5 * n : 26 + 5 * n]]) + "\n")
        done = net.run("client", CHECK.format(subjects=f"policy-{n}.csv", case=f"C-2026-01{n}"))
        assert done.returncode == 0, done.stderr[-2000:]
        assert len([ln for ln in done.stdout.splitlines()[1:-1] if ln.strip()]) == 5, done.stdout

    agreement = Path("policies") / "agreements" / "dibao-tax-monthly-income.cedar"
    seen = count("policy_reload_rejected")
    for host in parties:  # tampered: the agreement no longer allows the 低保 purpose
        path = net.hosts[host].home / agreement
        path.write_text(path.read_text().replace('"dibao"', '"nothing"'))
    rejected(seen, f"policy file {agreement.relative_to('policies')} differs from bundle version 1")
    checked(1)  # decided under the signed version 1, not the edited file
    seen = count("policy_reload_rejected")
    for host in parties:  # unsigned: the manifest gone
        (net.hosts[host].home / "policies" / ".bundle.json").unlink()
    rejected(seen, "holds no signed policy bundle")
    seen = count("policy_reload_rejected")
    for host in parties:  # the signed version 1 put back: the same version is not taken again
        shutil.copytree(v1[host], net.hosts[host].home / "policies", dirs_exist_ok=True)
    rejected(seen, "version 1 is not newer than version 1 in force")

    # A newer bundle, as the SECURITY.md runbook says: published at the CA, installed at each party.
    published = net.run("ca", "xgate policy publish --ca ca --policies policies --version 2 --out policies-v2.json")
    assert published.returncode == 0, published.stderr
    reloaded = count("policy_reloaded")
    for host in parties:
        shutil.copy(net.hosts["ca"].home / "policies-v2.json", net.hosts[host].home)
        done = net.run(host, "xgate policy install --bundle policies-v2.json --ca-cert ca/ca.cert.pem --into policies")
        assert done.returncode == 0, done.stderr
    for host, log in parties.items():
        assert _wait_event(log, "policy_reloaded", reloaded[host])["bundle_version"] == 2, host
    seen = count("policy_reload_rejected")
    for host in parties:  # older: version 1 copied back over version 2
        shutil.copytree(v1[host], net.hosts[host].home / "policies", dirs_exist_ok=True)
    rejected(seen, "version 1 is not newer than version 2 in force")
    checked(2)
    assert all(proc.poll() is None for proc in net.services)  # nobody restarted
