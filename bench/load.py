"""Load: 1 to 1,000 concurrent clients against a federation of real processes (issue 17 item 5).

A federation of real processes (app.devfed: five nodes, the gateway and its audit writer, mTLS,
signed envelopes) answers single-applicant HE checks of the 低保 program. At each concurrency
level every client loops for the level's duration: it sends a check with a client deadline
(`X-Request-Timeout`, and its own timeout a little beyond), waits `Retry-After` when refused and
sends again. Per level: answered, refused (503/429), client timeouts (no answer within the
client's deadline), other errors, goodput (answered checks per second), latency percentiles of
answered and of refused requests, and the peak RSS of the gateway's processes (sampled from
/proc). `at_1000` compares the 1,000-client level with the best level. A level of more than 250
clients is driven from several load processes (`client_processes`; one Python process driving
1,000 TLS clients is itself the bottleneck); `--levels 100,1000` runs chosen levels of a gateway
with its HE in worker processes and, beside it in the same run, of one with `he_workers = 0` (HE in
the gateway's threads, where TenSEAL holds the GIL) (`load.partial.json`).

`single_check_bytes` is what one single-applicant check moves on the wire (client <-> gateway
bodies + gateway <-> node protobuf) once the requester's context is registered and the nodes hold
it; `single_check_bytes_first` is the first check of a fresh key (the 404 `context_unknown`, the
registration, the check, and each node's context transfer). `single_check_ms_county_link` is measured from a
network namespace this benchmark creates (veth pair, 10.200.7.0/24, 20 Mbit/s and 40 ms round
trip: `tc netem`, or where the kernel lacks netem `tc tbf` for the rate and the relay for the
delay), removed on exit; it is null, with the reason, when namespaces cannot be made.

**Replicas** (issue 18): after the single gateway's levels, that gateway is stopped and two
gateway replicas on PostgreSQL (`[gateway] database`, each with its own audit log) serve the same
levels, the clients spread over them (client i talks to replica i mod 2). The PostgreSQL database
is a fresh one on the server at `--database` (default: $XGATE_TEST_PG or the development server),
dropped at the end. `replicas_2_speedup` is the best goodput of two replicas over the best of one.
Every level records where the machine's CPU went (`cpu`: seconds per second of the nodes, the
gateway processes, PostgreSQL and this client, against the machine's cores), so a speedup
below 2 says what it was limited by (`replicas_2_limited_by`).

The federation set-up and a level are functions (`federation`, `run_level`) so other benchmarks
can reuse them. Run: python -m bench.load [--quick | --single] [--database URL]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp  # the load clients (make bench installs it; a benchmark-only dependency)
import httpx

from app.devfed import (
    DEV_APPROVAL_REF,
    LEGAL_BASIS,
    DevFederation,
    prepare,
    register_dev_approval,
    start_nodes,
    write_gateway_config,
)
from app.launcher import Supervisor
from client.subjects import read_subjects
from crypto.envelope import SigningKey
from crypto.he import SLOTS, RequesterKeys
from exchange.pads import DEFAULT_MAX_WINDOWS
from xgate.pseudonym import Pseudonymiser, load_key

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
LEVELS = (1, 10, 100, 1000)
LEVEL_DURATION_S = {1: 15.0, 10: 20.0, 100: 25.0, 1000: 30.0}
CLIENT_DEADLINE_S = 10.0  # what a caseworker's client waits for one answer
CLIENTS_PER_PROCESS = 250
REFUSAL_GOAL_S = 2.0  # a refusal must come at once, never after waiting
NETNS = "xgate-county"
VETH_HOST, VETH_NS = "xgv-host", "xgv-county"
HOST_IP, NS_IP = "10.200.7.1", "10.200.7.2"
ONE_WAY_S = 0.020  # 40 ms round trip
TBF = ["tbf", "rate", "20mbit", "burst", "32kbit", "latency", "400ms"]
LINK: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# Federation (reusable)
# ---------------------------------------------------------------------------------------------
@dataclass
class Running:
    fed: DevFederation
    url: str
    gateway_pid: int
    keys: RequesterKeys
    body: bytes  # one single-applicant check request, JSON
    supervisor: Supervisor | None = None
    urls: list[str] = field(default_factory=list)  # replicas: the clients spread over them
    gateway_pids: list[int] = field(default_factory=list)

    def fresh_body(self) -> bytes:
        """`body` with its requester statement signed now (a statement is valid for 15 minutes)."""
        return json.dumps(self.fed.signed_check("caseworker", json.loads(self.body))).encode()


@contextlib.contextmanager
def federation(
    root: Path, people: int = 3000, applicants: int = 200, host: str = "127.0.0.1", **gateway: object
) -> Iterator[Running]:
    """Nodes + one gateway (its config `gateway` overrides merged in), ready for checks."""
    fed = prepare(root, people=people, applicants=applicants, tls=True, budget_max_checks=1_000_000)
    with Supervisor(log_dir=fed.log_dir) as supervisor:
        start_nodes(fed, supervisor)
        overrides: dict[str, Any] = {"rate_per_s": 100_000.0, "rate_burst": 100_000.0, "host": host, **gateway}
        write_gateway_config(fed, **overrides)
        child = supervisor.start("gateway", ["gateway", "serve", "--config", str(fed.gateway_config)])
        fed.gateway_url = str(child.announcement["url"])
        register_dev_approval(fed, fed.gateway_url)  # the approval DEV_APPROVAL_REF names, as its approver would
        keys = RequesterKeys.generate()
        fingerprint = register_context(fed, keys)
        pseudonymiser = Pseudonymiser(load_key(fed.pseudonym_key))
        subject = read_subjects(fed.applicants)[0]
        question = {
            "program": "dibao",
            "purpose": "dibao",
            "legal_basis": LEGAL_BASIS["dibao"],
            "case_id": "LOAD",
            "approval_ref": DEV_APPROVAL_REF,
            "pseudonyms": [pseudonymiser.pseudonym(subject)],
            "context_fingerprint": fingerprint,
        }
        # Signed as a client that resends one check would; each level signs it afresh (`fresh_body`).
        body = json.dumps(fed.signed_check("caseworker", question)).encode()
        yield Running(
            fed, fed.gateway_url, child.process.pid, keys, body, supervisor, [fed.gateway_url], [child.process.pid]
        )


def register_context(fed: DevFederation, keys: RequesterKeys, url: str | None = None) -> str:
    """POST /v1/contexts once for the load clients' key; their checks name the fingerprint."""
    data = {"public_context": base64.b64encode(keys.public_context).decode()}
    headers = {"Authorization": f"Bearer {fed.api_keys['caseworker']}"}
    tls = ssl.create_default_context(cafile=str(fed.ca_cert))
    answer = httpx.post(f"{url or fed.gateway_url}/v1/contexts", json=data, headers=headers, verify=tls, timeout=60)
    answer.raise_for_status()
    return str(answer.json()["fingerprint"])


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                todo.extend(int(c) for c in children)
    return pids


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


class RssSampler:
    """Peak RSS (MB) of a process and its children while the level runs."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(process_tree(self.pid)))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# One level
# ---------------------------------------------------------------------------------------------
@dataclass
class Tally:
    answered: list[float] = field(default_factory=list)  # seconds per answered check
    refused: list[float] = field(default_factory=list)  # seconds until a 503/429 came back
    refused_sent_at: list[float] = field(default_factory=list)  # seconds into the level each was sent
    timeouts: int = 0
    timeouts_sent_at: list[float] = field(default_factory=list)  # seconds into the level the request went out
    errors: dict[str, int] = field(default_factory=dict)


async def _client(
    http: aiohttp.ClientSession, body: bytes, headers: dict[str, str], started: float, stop_at: float, tally: Tally
) -> None:
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(CLIENT_DEADLINE_S + 1.0):  # the whole exchange, upload included
                async with http.post("/v1/checks", data=body, headers=headers) as response:
                    await response.read()
                    status, retry_after = response.status, response.headers.get("Retry-After", "1")
        except TimeoutError:
            tally.timeouts += 1
            tally.timeouts_sent_at.append(round(t0 - started, 2))
            continue
        except aiohttp.ClientError as exc:
            name = type(exc).__name__
            tally.errors[name] = tally.errors.get(name, 0) + 1
            await asyncio.sleep(0.5)
            continue
        elapsed = time.monotonic() - t0
        if status == 200:
            tally.answered.append(elapsed)
        elif status in (429, 503):
            tally.refused.append(elapsed)
            tally.refused_sent_at.append(round(t0 - started, 2))
            await asyncio.sleep(min(float(retry_after), max(0.0, stop_at - time.monotonic())))
        else:
            tally.errors[f"http_{status}"] = tally.errors.get(f"http_{status}", 0) + 1
            await asyncio.sleep(0.5)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def _level(urls: list[str], ca: Path, key: str, body: bytes, concurrency: int, duration_s: float) -> Tally:
    """`concurrency` clients over aiohttp (its C HTTP parser costs a load process about half of what
    httpx does per request, and the load generator shares this machine's cores with the federation)."""
    tally = Tally()
    verify = ssl.create_default_context(cafile=str(ca))
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "X-Request-Timeout": str(CLIENT_DEADLINE_S),
    }
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                aiohttp.ClientSession(
                    base_url=url,
                    # An idle connection is dropped before the gateway's keep-alive (uvicorn: 5 s) ends:
                    # one reused as the server closes it fails as ServerDisconnectedError.
                    connector=aiohttp.TCPConnector(limit=concurrency, ssl=verify, keepalive_timeout=4.0),
                )
            )
            for url in urls
        ]
        started = time.monotonic()
        stop_at = started + duration_s
        # Client-side spreading: client i talks to gateway i mod n.
        await asyncio.gather(
            *(_client(sessions[i % len(sessions)], body, headers, started, stop_at, tally) for i in range(concurrency))
        )
    return tally


def client_processes(concurrency: int) -> int:
    """Load-generating processes for a level: one asyncio process drives about 250 TLS clients
    before it becomes the bottleneck itself (at 1,000 in one process it used a whole core and its
    own queueing showed up as client timeouts)."""
    return max(1, min(4, -(-concurrency // CLIENTS_PER_PROCESS)))


def _run_clients(
    urls: list[str], ca: Path, key: str, body: bytes, concurrency: int, duration_s: float, procs: int
) -> Tally:
    """The level's clients, in this process or spread over `procs` child processes."""
    if procs == 1:
        return asyncio.run(_level(urls, ca, key, body, concurrency, duration_s))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    children = []
    for share in shares:
        spec = {"urls": urls, "ca": str(ca), "key": key, "body": base64.b64encode(body).decode(),
                "concurrency": share, "duration_s": duration_s}  # fmt: skip
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.load", "--level-worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        assert children[-1].stdin is not None
        children[-1].stdin.write(json.dumps(spec))
        children[-1].stdin.close()
    tally = Tally()
    for child in children:
        assert child.stdout is not None
        out = child.stdout.read()  # the tally, printed when the child's share of the level ends
        if child.wait(timeout=120) != 0:
            raise RuntimeError(f"a load client process failed with exit code {child.returncode}")
        part = json.loads(out)
        tally.answered += part["answered"]
        tally.refused += part["refused"]
        tally.timeouts += part["timeouts"]
        tally.timeouts_sent_at += part["timeouts_sent_at"]
        tally.refused_sent_at += part["refused_sent_at"]
        for name, n in part["errors"].items():
            tally.errors[name] = tally.errors.get(name, 0) + n
    return tally


def _level_worker() -> None:
    """One load client process (--level-worker): its share of a level's clients; the tally as JSON."""
    spec = json.loads(sys.stdin.read())
    tally = asyncio.run(
        _level(spec["urls"], Path(spec["ca"]), spec["key"], base64.b64decode(spec["body"]),
               int(spec["concurrency"]), float(spec["duration_s"]))
    )  # fmt: skip
    print(json.dumps({"answered": tally.answered, "refused": tally.refused, "timeouts": tally.timeouts,
                      "timeouts_sent_at": tally.timeouts_sent_at, "refused_sent_at": tally.refused_sent_at,
                      "errors": tally.errors}))  # fmt: skip


def run_level(running: Running, concurrency: int, duration_s: float, processes: int | None = None) -> dict[str, Any]:
    """`concurrency` clients for `duration_s` against the running gateway; the level's figures.
    `processes`: load client processes (default `client_processes(concurrency)`)."""
    procs = processes or client_processes(concurrency)
    started = time.monotonic()
    urls = running.urls or [running.url]
    pids = running.gateway_pids or [running.gateway_pid]
    groups = _cpu_groups(running)
    cpu_before = {(name, pid): cpu_seconds([pid], children=name == "client") for name, p in groups.items() for pid in p}
    machine_before = machine_cpu()
    with contextlib.ExitStack() as stack:
        samplers = [stack.enter_context(RssSampler(pid)) for pid in pids]
        tally = _run_clients(
            urls,
            running.fed.ca_cert,
            running.fed.api_keys["caseworker"],
            running.fresh_body(),
            concurrency,
            duration_s,
            procs,
        )
    wall = time.monotonic() - started
    # Processes started during the level (the gateway's HE workers start on demand) count from birth.
    groups = _cpu_groups(running)
    cpu = {
        name: round(
            sum(cpu_seconds([pid], children=name == "client") - cpu_before.get((name, pid), 0.0) for pid in p) / wall,
            2,
        )
        for name, p in groups.items()
    }
    machine_busy, machine_total = (a - b for a, b in zip(machine_cpu(), machine_before, strict=True))
    return {
        "concurrency": concurrency,
        "client_processes": procs,
        "duration_s": round(wall, 1),
        "answered": len(tally.answered),
        "refused": len(tally.refused),
        "client_timeouts": tally.timeouts,
        # When the requests that timed out were sent (seconds into the level): the connection burst
        # at the start (every client opens its TLS connection at once) or steady state.
        "client_timeouts_by_sent_s": {
            f"{lo}-{hi}": sum(lo <= t < hi for t in tally.timeouts_sent_at) for lo, hi in ((0, 5), (5, 10), (10, 20))
        }
        | {"20+": sum(t >= 20 for t in tally.timeouts_sent_at)},
        # The slowest refusal among the requests sent in each span: the first seconds, when every
        # client opens its TLS connection at once, against the steady state after.
        "refused_ms_max_by_sent_s": {
            span: _pct([r for r, t in zip(tally.refused, tally.refused_sent_at, strict=True) if lo <= t < hi], 1.0)
            for span, lo, hi in (("0-5", 0, 5), ("5+", 5, 1e9))
        },
        "errors": tally.errors,
        "goodput_per_s": round(len(tally.answered) / wall, 2),
        "answered_ms": {
            "p50": _pct(tally.answered, 0.5),
            "p95": _pct(tally.answered, 0.95),
            "p99": _pct(tally.answered, 0.99),
        },
        "refused_ms": {
            "p50": _pct(tally.refused, 0.5),
            "p99": _pct(tally.refused, 0.99),
            "max": _pct(tally.refused, 1.0),
        },
        "gateway_rss_max_mb": round(sum(r.peak for r in samplers), 1),
        "cpu": {
            **cpu,
            "busy_of_cores": round(sum(cpu.values()) / (os.cpu_count() or 1), 2),
            # everything on the machine (other work included), from /proc/stat
            "machine_busy_of_cores": round(machine_busy / machine_total, 2) if machine_total else None,
        },
    }


def cpu_seconds(pids: list[int], children: bool = False) -> float:
    """User + system CPU seconds of these processes so far (/proc/<pid>/stat); with `children`,
    also of their children that have been waited for (the load client processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
            if children:
                total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / tick


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot (/proc/stat), idle and iowait counted as not busy."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4], total


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
    return pids


def _cpu_groups(running: Running) -> dict[str, list[int]]:
    """Where the CPU goes during a level: nodes, gateways (with their audit writers and HE workers),
    PostgreSQL, the client."""
    gateways = [p for pid in (running.gateway_pids or [running.gateway_pid]) for p in process_tree(pid)]
    nodes: list[int] = []
    if running.supervisor is not None:
        for child in running.supervisor.children:
            if child.name.startswith("node") or child.name in running.fed.agencies:
                nodes.extend(process_tree(child.process.pid))
    return {"nodes": nodes, "gateways": gateways, "postgres": _postgres_pids(), "client": [os.getpid()]}


# ---------------------------------------------------------------------------------------------
# Two replicas on PostgreSQL
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server at `admin_url` (a postgresql:// URL), dropped afterwards."""
    import secrets
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"xgate_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_replicas(running: Running, database_url: str, n: int = 2) -> Running:
    """Stop the single gateway; start `n` replicas on the database (migrated first). Same nodes."""
    from app.devfed import start_gateway

    supervisor = running.supervisor
    assert supervisor is not None
    for child in [c for c in supervisor.children if c.name == "gateway"]:
        supervisor.stop(child)
    # Replicas sharing one host share its cores: each gets its share of HE workers (the default, one
    # per core, is sized for one gateway per host; two replicas with two each oversubscribed 2 cores).
    workers = max(1, (os.cpu_count() or 1) // n)
    overrides: dict[str, Any] = {
        "rate_per_s": 100_000.0, "rate_burst": 100_000.0, "host": "127.0.0.1", "he_workers": workers,
    }  # fmt: skip
    configs = [
        write_gateway_config(
            running.fed,
            config_path=running.fed.gateway_dir / f"bench-replica-{k}.toml",
            database=database_url,
            replica=f"r{k}",
            **overrides,
        )
        for k in range(n)
    ]
    subprocess.run(
        [sys.executable, "-m", "app.cli", "gateway", "migrate", "--config", str(configs[0])],
        check=True,
        capture_output=True,
        timeout=120,
    )
    urls = [start_gateway(running.fed, supervisor, config_path=c, name=f"replica-{k}") for k, c in enumerate(configs)]
    # The replicas' shared database starts empty (start_gateway registered the dev approval): the
    # clients' context is registered once, through one replica, as a client would (same fingerprint).
    register_context(running.fed, running.keys, urls[0])
    pids = [c.process.pid for c in supervisor.children if c.name.startswith("replica-")]
    return Running(running.fed, urls[0], pids[0], running.keys, running.body, supervisor, urls, pids)


# ---------------------------------------------------------------------------------------------
# Single check: bytes, and latency over a county office's link
# ---------------------------------------------------------------------------------------------
def single_check_bytes(running: Running) -> dict[str, dict[str, int]]:
    """Bytes of a fresh key's first single-applicant check and of the next one (context registered)."""
    from client.sdk import GatewayClient

    pseudonymiser = Pseudonymiser(load_key(running.fed.pseudonym_key))
    ids = read_subjects(running.fed.applicants)[:1]
    out: dict[str, dict[str, int]] = {}
    with GatewayClient(
        running.url, running.fed.api_keys["caseworker"], pseudonymiser, RequesterKeys.generate(),
        verify=str(running.fed.ca_cert), signer=running.fed.signer("caseworker"),
        identity=running.fed.identity("caseworker"),
    ) as client:  # fmt: skip
        for label in ("first", "after_registration"):
            result = client.check(
                "dibao", ids, "dibao", LEGAL_BASIS["dibao"], f"LOAD-BYTES-{label}", approval_ref=DEV_APPROVAL_REF
            )
            out[label] = {
                "client_gateway": result.wire_bytes,
                "gateway_nodes": result.node_bytes,
                "total": result.wire_bytes + result.node_bytes,
            }
    return out


def start_relay(listen: tuple[str, int], target: tuple[str, int], delay_s: float = 0.0) -> threading.Thread:
    """A TCP relay in a daemon thread (the gateway stays on loopback; TLS passes through it).
    With `delay_s`, every byte is held that long in each direction (order kept): a link's latency."""
    ready = threading.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                queue.put_nowait((loop.time() + delay_s, chunk))
        queue.put_nowait((loop.time() + delay_s, b""))
        with contextlib.suppress(OSError):
            await sender

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    async def serve() -> None:
        server = await asyncio.start_server(handle, *listen)
        ready.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"relay on {listen} did not start")
    return thread


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@contextlib.contextmanager
def county_link() -> Iterator[None]:
    """A namespace behind a veth pair shaped to 20 Mbit/s and 40 ms round trip (20 ms each way)."""
    _teardown()
    try:
        _sh("ip", "netns", "add", NETNS)
        _sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
        _sh("ip", "link", "set", VETH_NS, "netns", NETNS)
        _sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", VETH_HOST)
        _sh("ip", "link", "set", VETH_HOST, "up")
        _sh("ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{NS_IP}/24", "dev", VETH_NS)
        _sh("ip", "netns", "exec", NETNS, "ip", "link", "set", VETH_NS, "up")
        _sh("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        for ns, dev in ((None, VETH_HOST), (NETNS, VETH_NS)):
            prefix = ["ip", "netns", "exec", ns] if ns else []
            shape = ["netem", "delay", f"{ONE_WAY_S * 1000:g}ms", "rate", "20mbit"]
            if subprocess.run(
                [*prefix, "tc", "qdisc", "add", "dev", dev, "root", *shape], capture_output=True
            ).returncode:
                # This kernel has no netem: the rate by a token bucket, the delay by the relay.
                _sh(*prefix, "tc", "qdisc", "add", "dev", dev, "root", *TBF)
                LINK["emulation"] = "tc tbf 20 Mbit/s on the veth pair; 20 ms each way added by the relay (no netem)"
            else:
                LINK["emulation"] = "tc netem 20 ms + 20 Mbit/s on each end of the veth pair"
        yield
    finally:
        _teardown()


def _teardown() -> None:
    subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)


def county_check_ms(running: Running, workdir: Path, repeats: int = 5) -> dict[str, Any]:
    """Median of single-applicant checks run from inside the county namespace."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return {"ms": None, "reason": "ip/tc not installed"}
    keys_file = workdir / "requester.secret"
    running.keys.save(keys_file)
    port = int(running.url.rsplit(":", 1)[1])
    args = {
        "port": port,
        "key": running.fed.api_keys["caseworker"],
        "pseudonym_key": str(running.fed.pseudonym_key),
        "requester": str(keys_file),
        "signing_key": str(running.fed.signing_key("caseworker")),
        "user": running.fed.identity("caseworker")[0],
        "agency": running.fed.identity("caseworker")[1],
        "ca": str(running.fed.ca_cert),
        "subject": read_subjects(running.fed.applicants)[1],
        "repeats": repeats,
    }
    try:
        with county_link():
            # The link's end of the gateway; it adds the one-way delays when netem could not.
            delay = ONE_WAY_S if "relay" in LINK.get("emulation", "") else 0.0
            start_relay((HOST_IP, port), ("127.0.0.1", port), delay_s=delay)
            done = subprocess.run(
                ["ip", "netns", "exec", NETNS, sys.executable, "-m", "bench.load", "--county-client", json.dumps(args)],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            )
    except (subprocess.CalledProcessError, OSError) as exc:
        return {"ms": None, "reason": f"cannot build the namespace: {exc}"}
    if done.returncode != 0:
        return {"ms": None, "reason": done.stderr.strip()[-400:]}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), **LINK}


def _county_client(raw: str) -> None:
    """Inside the namespace: a caseworker's client. It dials 127.0.0.1 (the name the gateway's
    certificate carries) where a relay forwards over the shaped link to the gateway's host."""
    from client.sdk import GatewayClient

    args = json.loads(raw)
    port = int(args["port"])
    start_relay(("127.0.0.1", port), (HOST_IP, port))
    pseudonymiser = Pseudonymiser(load_key(Path(args["pseudonym_key"])))
    keys = RequesterKeys.load(Path(args["requester"]))
    times = []
    signer, identity = SigningKey.load(Path(args["signing_key"])), (args["user"], args["agency"])
    with GatewayClient(
        f"https://127.0.0.1:{port}",
        args["key"],
        pseudonymiser,
        keys,
        verify=args["ca"],
        signer=signer,
        identity=identity,
    ) as client:
        for i in range(int(args["repeats"]) + 1):
            t0 = time.perf_counter()
            client.check(
                "dibao", [args["subject"]], "dibao", LEGAL_BASIS["dibao"], f"COUNTY-{i}", approval_ref=DEV_APPROVAL_REF
            )
            if i:  # the first one opens the connection and warms caches
                times.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1), "repeats": len(times)}))


# ---------------------------------------------------------------------------------------------
def _levels(
    running: Running, levels: tuple[int, ...], duration: dict[int, float], label: str, processes: int | None = None
) -> list[dict[str, Any]]:
    rows = []
    for level in levels:
        rows.append(run_level(running, level, duration[level], processes=processes))
        r = rows[-1]
        print(
            f"{label}: {level:>5} clients: {r['answered']:>5} answered, {r['refused']:>6} refused, "
            f"{r['client_timeouts']:>4} timeouts, goodput {r['goodput_per_s']:>6}/s, "
            f"p50 {r['answered_ms']['p50']} ms, p99 {r['answered_ms']['p99']} ms, "
            f"gateway RSS {r['gateway_rss_max_mb']} MB, cpu {r['cpu']}",
            flush=True,
        )
    return rows


def limited_by(rows: list[dict[str, Any]]) -> str:
    """What the best level of a run was short of: the machine's cores, and who used them."""
    peak = max(rows, key=lambda r: r["goodput_per_s"])
    cpu = peak["cpu"]
    cores = os.cpu_count() or 1
    ours = {k: v for k, v in cpu.items() if k not in ("busy_of_cores", "machine_busy_of_cores")}
    users = ", ".join(f"{k} {v:.2f}" for k, v in sorted(ours.items(), key=lambda kv: -kv[1]))
    machine = cpu.get("machine_busy_of_cores") or 0.0
    where = f"at the best level ({peak['concurrency']} clients; CPU seconds per second: {users})"
    if machine >= 0.85 and cpu["busy_of_cores"] < 0.6 * machine:
        return (
            f"the machine's CPU, taken by other work: {machine:.0%} of {cores} cores busy, this benchmark's "
            f"processes {cpu['busy_of_cores']:.0%} {where}; measure on a quiet machine"
        )
    if machine >= 0.85:
        return (
            f"the machine's CPU: {machine:.0%} of {cores} cores busy, this benchmark's processes "
            f"{cpu['busy_of_cores']:.0%} {where}; a second gateway process adds no core, it shares "
            "the same ones with the nodes, PostgreSQL and the client"
        )
    return f"not the CPU ({machine:.0%} of {cores} cores busy {where}): admission limits and waits"


def run(quick: bool, database: str) -> dict[str, Any]:
    levels = (1, 10, 100) if quick else LEVELS
    duration = LEVEL_DURATION_S if not quick else {1: 5.0, 10: 5.0, 100: 8.0}
    with tempfile.TemporaryDirectory(prefix="xgate-load-") as tmp, federation(Path(tmp) / "fed") as running:
        rows = _levels(running, levels, duration, "1 gateway")
        single_bytes = single_check_bytes(running)
        county = county_check_ms(running, Path(tmp)) if not quick else {"ms": None, "reason": "--quick"}
        settings = json.loads(json.dumps(_admission_settings(running)))
        with postgres_database(database) as url:
            replicas = start_replicas(running, url)
            replica_rows = _levels(replicas, levels, duration, "2 replicas")
    best = max(r["goodput_per_s"] for r in rows)
    best_replicas = max(r["goodput_per_s"] for r in replica_rows)
    speedup = round(best_replicas / best, 2) if best else None
    top = next((r for r in rows if r["concurrency"] == 1000), None)
    return {
        "benchmark": "load",
        "federation": "5 nodes + gateway (real processes), mTLS gRPC, signed envelopes; 低保, 1 applicant per check",
        "client": f"aiohttp, deadline {CLIENT_DEADLINE_S:g} s (X-Request-Timeout), honours Retry-After; "
        f"up to {CLIENTS_PER_PROCESS} clients per load process (`client_processes` per level)",
        "admission": settings,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "quick": quick,
        "levels": rows,
        "at_1000": (
            {
                "client_timeouts": top["client_timeouts"],
                "goodput_ratio_to_peak": round(top["goodput_per_s"] / best, 3) if best else None,
                "gateway_rss_max_mb": top["gateway_rss_max_mb"],
                "refused_ms_max": top["refused_ms"]["max"],
            }
            if top
            else None
        ),
        "replicas_2": {
            "setup": "two gateway replicas on one PostgreSQL database (fresh, on the server at --database), "
            "each with its own audit log; the single gateway stopped; clients spread i mod 2; same nodes",
            "levels": replica_rows,
        },
        "replicas_2_speedup": speedup,
        "replicas_2_speedup_by_level": {
            str(a["concurrency"]): round(b["goodput_per_s"] / a["goodput_per_s"], 2) if a["goodput_per_s"] else None
            for a, b in zip(rows, replica_rows, strict=True)
        },
        "replicas_2_limited_by": {"one_gateway": limited_by(rows), "two_replicas": limited_by(replica_rows)},
        "single_check_bytes": single_bytes["after_registration"],
        "single_check_bytes_first": single_bytes["first"],
        "single_check_ms_county_link": county.get("ms"),
        "county_link": {"rate": "20 Mbit/s", "rtt_ms": 40, **county},
        "goals": {"client_timeouts_at_1000": 0, "goodput_ratio_to_peak": 0.8, "gateway_rss_max_mb": 2048,
                  "refusal_s": REFUSAL_GOAL_S, "single_check_bytes": 1_000_000, "single_check_ms_county_link": 500,
                  "replicas_2_speedup": 1.5},
    }  # fmt: skip


def run_single() -> dict[str, Any]:
    """Only the single-check figures (bytes, county link): a quick run beside the full benchmark.
    Side by side in one run: the gateway as shipped (one-time pads) and the same federation with
    `one_time_pads = false` (a fresh ciphertext per element from the nodes for every check)."""
    runs: dict[str, dict[str, Any]] = {}
    for label, pads in (("pads", True), ("fresh_ciphertexts", False)):
        with (
            tempfile.TemporaryDirectory(prefix="xgate-load-") as tmp,
            federation(Path(tmp) / "fed", one_time_pads=pads) as running,
        ):
            runs[label] = {"bytes": single_check_bytes(running), "county": county_check_ms(running, Path(tmp))}
    shipped, before = runs["pads"], runs["fresh_ciphertexts"]
    county = shipped["county"]
    return {
        "benchmark": "load (single check only)",
        "federation": "5 nodes + gateway (real processes), mTLS gRPC, signed envelopes; 低保, 1 applicant",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "single_check_bytes": shipped["bytes"]["after_registration"],
        "single_check_bytes_first": shipped["bytes"]["first"],
        "single_check_ms_county_link": county.get("ms"),
        "county_link": {"rate": "20 Mbit/s", "rtt_ms": 40, **county},
        "without_pads": {
            "single_check_bytes": before["bytes"]["after_registration"],
            "single_check_bytes_first": before["bytes"]["first"],
            "single_check_ms_county_link": before["county"].get("ms"),
        },
        # single 低保 checks one pad batch serves: 3 slots each, at most the gateway's pad_batch_checks
        "pad_batch_checks": min(SLOTS // 3, DEFAULT_MAX_WINDOWS),
        "goals": {"single_check_bytes": 1_000_000, "single_check_ms_county_link": 500},
    }  # fmt: skip


def run_partial(levels: tuple[int, ...], compare: str = "he_workers") -> dict[str, Any]:
    """Only the given levels, side by side in one run: the gateway as configured and the same
    gateway with one setting changed. `compare`: "he_workers" (HE in worker processes against
    `he_workers = 0`, HE in its own threads) or "pads" (one-time pads against `one_time_pads = false`)."""
    from gateway.he_workers import default_workers

    variants: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
        "he_workers": (
            ("HE in worker processes", {"he_workers": default_workers()}),
            ("HE in the gateway's threads", {"he_workers": 0}),
        ),
        "pads": (
            ("one-time pads (as shipped)", {"one_time_pads": True}),
            ("fresh node ciphertexts for every check", {"one_time_pads": False}),
        ),
    }
    duration = {level: LEVEL_DURATION_S.get(level, 30.0) for level in levels}
    runs = []
    for label, overrides in variants[compare]:
        with (
            tempfile.TemporaryDirectory(prefix="xgate-load-") as tmp,
            federation(Path(tmp) / "fed", **overrides) as running,
        ):
            rows = _levels(running, levels, duration, label)
            settings = json.loads(json.dumps(_admission_settings(running)))
        runs.append({"gateway": label, **overrides, "levels": rows})
    return {
        "compare": compare,
        "benchmark": f"load (partial: chosen levels; {variants[compare][0][0]} against {variants[compare][1][0]})",
        "admission": settings,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "runs": runs,
    }  # fmt: skip


def _admission_settings(running: Running) -> dict[str, Any]:
    from gateway.config import load_gateway_config

    return load_gateway_config(running.fed.gateway_config).gateway.admission.model_dump()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="levels 1, 10, 100 only, short (smoke run)")
    parser.add_argument(
        "--database",
        default=os.environ.get("XGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL server (a postgresql:// URL) where the replicas' database is created and dropped",
    )
    parser.add_argument("--single", action="store_true", help="only the single-check bytes and county-link latency")
    parser.add_argument("--county-client", help=argparse.SUPPRESS)  # the client inside the namespace
    parser.add_argument("--level-worker", action="store_true", help=argparse.SUPPRESS)  # one load client process
    parser.add_argument("--levels", help="comma-separated concurrency levels of one gateway only (a partial run)")
    parser.add_argument(
        "--compare",
        choices=("he_workers", "pads"),
        default="he_workers",
        help="what a partial run compares: HE worker processes, or one-time pads (writes load.pads.json)",
    )
    args = parser.parse_args()
    if args.level_worker:
        _level_worker()
        return
    if args.county_client:
        _county_client(args.county_client)
        return
    if args.single:
        single = run_single()
        out = RESULTS.with_name("load.single.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(single, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps({k: single[k] for k in ("single_check_bytes", "single_check_bytes_first",
                                                 "single_check_ms_county_link")}))  # fmt: skip
        print(f"wrote {out}")
        return
    if args.levels:
        partial = run_partial(tuple(int(x) for x in args.levels.split(",")), args.compare)
        out = RESULTS.with_name("load.partial.json" if args.compare == "he_workers" else f"load.{args.compare}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(partial, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {out}")
        return
    result = run(args.quick, args.database)
    out = RESULTS.with_name("load-quick.json") if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
