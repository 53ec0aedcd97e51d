"""orphan_guard.popen_guarded: a guarded process dies with its parent *process*, not with the
thread that asked for it (the kernel's parent-death signal follows the forking thread)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from federated.orphan_guard import popen_guarded


def test_a_process_started_from_a_short_lived_thread_outlives_the_thread() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start_then_end() -> None:
        started.append(popen_guarded(["/bin/sleep", "30"], start_new_session=True))
        time.sleep(1.5)  # long enough for the guard to arm the death signal, as a real start takes

    t = threading.Thread(target=start_then_end)
    t.start()
    t.join()
    proc = started[0]
    try:
        time.sleep(0.5)
        assert proc.poll() is None, f"the guarded process died with its starting thread ({proc.returncode})"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_a_failed_start_is_reported_to_the_caller() -> None:
    proc = popen_guarded(["/nonexistent/flower-binary"])
    assert proc.wait(30) != 0  # orphan_guard's execv fails in the child: non-zero exit, no hang


def test_exit_with_parent_ends_a_child_whose_parent_was_killed(tmp_path: Path) -> None:
    """A parent starts a child that calls exit_with_parent and then blocks (as the ServerApp blocks
    in the Grid's retries); the parent is killed with SIGKILL: the child is gone within seconds. The
    control child, without the watch, is still there."""
    pids = tmp_path / "pids"
    child = (
        "import sys, time\n"
        "from federated.orphan_guard import exit_with_parent\n"
        "if sys.argv[1] == 'watch': exit_with_parent(poll_s=0.1)\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import subprocess, sys\n"
        f"kids = [subprocess.Popen([sys.executable, '-c', {child!r}, mode]) for mode in ('watch', 'control')]\n"
        f"open({str(pids)!r}, 'w').write(' '.join(str(k.pid) for k in kids))\n"
        "kids[0].wait()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    watched, control = (int(p) for p in pids.read_text().split())
    time.sleep(1.0)  # both children running, the watch armed
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    try:
        deadline = time.monotonic() + 10
        while _alive(watched) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(watched), "the watched child outlived its killed parent"
        assert _alive(control), "the control child died too: the test shows nothing"
    finally:
        for pid in (watched, control):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan is reaped by init once it exits)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_exit_with_parent_can_watch_a_named_process_and_parent_pid_reads_flowers_flag() -> None:
    """A warm ClientApp run watches the SuperExec Flower names (`--parent-pid`), not its own parent."""
    from federated.clientapp_entry import parent_pid

    assert parent_pid(["flwr-clientapp", "--token", "t", "--parent-pid", "123"]) == 123
    assert parent_pid(["flwr-clientapp", "--parent-pid=45"]) == 45
    assert parent_pid(["flwr-clientapp", "--parent-pid"]) is None and parent_pid(["flwr-clientapp"]) is None
    assert parent_pid(["flwr-clientapp", "--parent-pid", "x1"]) is None
    named = subprocess.Popen(["/bin/sleep", "60"])
    child = (
        "import signal, sys, time\n"
        "from federated.orphan_guard import exit_with_parent\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)  # deaf, as a run blocked in gRPC is\n"
        "exit_with_parent(poll_s=0.1, parent=int(sys.argv[1]))\n"
        "time.sleep(60)\n"
    )
    watcher = subprocess.Popen(
        [sys.executable, "-c", child, str(named.pid)], env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    try:
        time.sleep(1.0)
        assert watcher.poll() is None  # its own parent (this test) lives; only the named process matters
        named.kill()
        named.wait(10)
        assert watcher.wait(timeout=10) == 70
    finally:
        for proc in (named, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
