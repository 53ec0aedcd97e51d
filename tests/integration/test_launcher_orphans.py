"""A real federation (nodes + the gateway, and the gateway's audit writer child) started through
app/launcher.py dies with its launcher when the launcher is SIGKILLed: an interrupted test run
once left 28 node and gateway processes behind. Two agencies' nodes: every node is the same kind of
child, and each more costs the suite seconds of start-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.devfed import prepare

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

LAUNCHER = """
import json, sys, time
from pathlib import Path
from app.devfed import DevFederation, start_gateway, start_nodes, write_gateway_config
from app.launcher import Supervisor
fed = DevFederation(root=Path(sys.argv[1]), agencies=tuple(sys.argv[2].split(",")), tls=True)
supervisor = Supervisor(log_dir=fed.root / "orphan-logs")
start_nodes(fed, supervisor)
write_gateway_config(fed)
start_gateway(fed, supervisor)
print(json.dumps([c.process.pid for c in supervisor.children]), flush=True)
time.sleep(600)
"""


def _children_of(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                out.add(int(entry.name))
    return out


def _command(pid: int) -> str:
    """What a process runs (for the failure message)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return f"{pid} (gone)"


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in _children_of(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's prctl")
def test_a_killed_launcher_leaves_no_node_or_gateway_running(tmp_path: Path) -> None:
    fed = prepare(tmp_path / "fed", people=300, applicants=20, tls=True)
    agencies = fed.agencies[:2]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(fed.root), ",".join(agencies)],
        stdout=subprocess.PIPE, cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    everyone: set[int] = set()
    try:
        assert launcher.stdout is not None
        started = json.loads(launcher.stdout.readline())
        assert len(started) == len(agencies) + 1  # every node and the gateway
        everyone = _descendants(launcher.pid)  # with the gateway's own children (audit writer)
        assert set(started) <= everyone and len(everyone) > len(started)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        deadline = time.monotonic() + 30
        while any(_running(p) for p in everyone) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = sorted(p for p in everyone if _running(p))
        assert left == [], f"processes outlived their launcher: {[_command(p) for p in left]}"
    finally:
        for pid in everyone:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(10)
