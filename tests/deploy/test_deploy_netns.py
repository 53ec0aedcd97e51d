"""A federation across hosts, from the README alone: docs/deploy_steps.sh run as written.

Each agency (tax, hrss, civil_affairs, household), the gateway and the client get their own network
namespace on a bridge, an address in 10.231.N.0/24, a host name in their /etc/hosts and a directory
holding only their own files; the CA runs in a directory of its own (it is offline). Files travel
only through `scp` (a stand-in that copies between the hosts' directories). After the 低保 check of
300 applicants and every node's renewal of its certificate and keys with all services running (the
check after it passes with the same verdicts; each node logged `signing_key_reloaded`), the tax
node's link is taken down (the check fails naming tax; the gateway's service
log records `node_failed` with the reason) and brought up again (readiness returns by itself, the
next check passes, `node_recovered` is logged). Everything is removed at the end, also on failure.

Runs when the test runs as root with `ip netns`; otherwise the terminal summary says loudly that it
did not run (tests/deploy/summary.py).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.deploy import netns
from tests.deploy.steps import AGENCIES, Block, parse
from tests.deploy.summary import BANNER

# ~2 min on an idle 2-core box, up to ~5 under a full parallel suite: above the suite's 300 s default.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]
REASON = netns.available()
READY_S = 120.0
NAMES = {"ca": "ca", "gateway": "gw.xgate.test", **AGENCIES, "client": "client.xgate.test"}
CHECK = (
    "XGATE_API_KEY=$(cat cw-zhou.apikey) xgate check --program dibao --subjects {subjects} --purpose dibao "
    "--legal-basis SAR-2014-art-12 --case-id {case} --approval-ref $(cat approval.ref) "
    "--gateway https://gw.xgate.test:8443 --ca ca.cert.pem --pseudonym-key pseudonym.key --key-file requester.key"
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


def _wait_ready(log: Path, proc: subprocess.Popen[bytes], what: str) -> dict[str, object]:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"event": "ready"' in line:
                return dict(json.loads(line))
        if proc.poll() is not None:
            pytest.fail(f"{what} exited before it was ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{what} not ready within {READY_S:.0f} s:\n{log.read_text()[-3000:]}")


def _run_block(net: netns.Network, block: Block, outputs: dict[str, str]) -> None:
    runs = [(a, {"AGENCY": a, "NODE": fqdn}) for a, fqdn in AGENCIES.items()] if block.per_agency else [(None, {})]
    logs = net.root / "logs"
    logs.mkdir(exist_ok=True)
    if block.service:
        started = [(a, net.start(_host(block, a), block.script, logs / f"{_host(block, a)}.log", env))
                   for a, env in runs]  # fmt: skip
        for agency, proc in started:
            _wait_ready(logs / f"{_host(block, agency)}.log", proc, f"{block.host} {agency or ''}")
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


def _readyz(net: netns.Network) -> httpx.Response:
    ctx = ssl.create_default_context(cafile=str(net.hosts["client"].home / "ca.cert.pem"))
    ctx.check_hostname = False  # we dial the address from the bridge; the certificate names gw.xgate.test
    return httpx.get(f"https://{net.hosts['gateway'].address}:8443/readyz", verify=ctx, timeout=30)


def test_deployment_across_hosts_from_the_readme(network: netns.Network) -> None:
    t0 = time.monotonic()
    outputs: dict[str, str] = {}
    first_check_s = 0.0
    reports = []
    for block in parse():
        _run_block(network, block, outputs)
        if block.host == "client" and any(" xgate check " in c for c in block.commands):
            first_check_s = first_check_s or time.monotonic() - t0
            reports.append(outputs["client"])
    assert len(reports) == 2  # after the deployment, and again after every node renewed its keys
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
    assert _readyz(network).status_code == 503
    down_s = time.monotonic() - t_down

    # ... and up again: readiness comes back by itself, the next check passes, the log says so.
    network.link("tax", up=True)
    deadline = time.monotonic() + 120
    while (ready := _readyz(network)).status_code != 200:
        assert time.monotonic() < deadline, ready.json()
        time.sleep(1)
    passed = network.run("client", CHECK.format(subjects="subset-b.csv", case="C-2026-003"))
    assert passed.returncode == 0, passed.stderr[-2000:]
    assert "request " in passed.stdout.splitlines()[-1]
    recovered = [e for e in _events(gw_log, "node_recovered") if e.get("agency") == "tax"]
    assert recovered, gw_log.read_text()[-3000:]
    timings = {"first_check_s": round(first_check_s, 1), "link_down_s": round(down_s, 1),
               "total_s": round(time.monotonic() - t0, 1)}  # fmt: skip
    print(f"deployment across hosts: {json.dumps(timings)}; failure seen as: {node_failed[0]['reason']}")  # noqa: T201
