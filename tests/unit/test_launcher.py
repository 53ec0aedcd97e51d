"""app/launcher.py: every child dies with the process that started it, even when that one is
SIGKILLed and cannot reap them (28 node and gateway processes were once left by one timeout)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.launcher import Supervisor
from xgate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CHILD = "tests.unit.launcher_child"

PARENT = f"""
import json, time
from app.launcher import Supervisor
supervisor = Supervisor()
children = [supervisor.start(name, [], module={CHILD!r}, timeout_s=30) for name in ("node-a", "gateway")]
print(json.dumps([c.process.pid for c in children]), flush=True)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead child nobody has reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's prctl")
def test_children_die_when_the_launching_process_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, cwd=ROOT, env=env, start_new_session=True
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 2 and all(_running(p) for p in pids)
        parent.send_signal(signal.SIGKILL)  # no chance to run Supervisor.stop_all
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in pids if _running(p)] == [], "children outlived their launcher"
    finally:
        for pid in pids:  # never leave them behind, even when the assertion failed
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_stop_all_stops_every_child() -> None:
    with Supervisor() as supervisor:
        children = [supervisor.start(n, [], module=CHILD, timeout_s=30) for n in ("a", "b")]
        assert all(c.alive() for c in children)
    assert not any(c.alive() for c in children)


def test_a_child_that_exits_before_ready_is_a_clear_error() -> None:
    with Supervisor() as supervisor, pytest.raises(ConfigError, match="broken exited with code 2 before it was ready"):
        supervisor.start("broken", ["--no-such-option"], module="json.tool", timeout_s=30)
