"""A runner killed with SIGKILL does not leave its Flower processes behind (federated/orphan_guard.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RUNNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from federated.deployment import Federation

    fed = Federation(Path(sys.argv[1]), insecure=True)
    fed.start_superlink()
    print("SUPERLINK", fed.procs["superlink"].popen.pid, flush=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.integration
def test_flower_processes_die_with_a_killed_runner(tmp_path: Path) -> None:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    superlink = 0
    try:
        assert runner.stdout is not None
        for line in runner.stdout:  # other lines are log output
            if line.startswith("SUPERLINK "):
                superlink = int(line.split()[1])
                break
        assert _alive(superlink)
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _alive(superlink) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(superlink), "the SuperLink outlived the runner that started it"
    finally:
        if runner.poll() is None:
            runner.kill()
        if superlink and _alive(superlink):
            os.killpg(superlink, signal.SIGKILL)
