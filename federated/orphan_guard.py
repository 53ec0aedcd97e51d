"""Run a Flower process that dies with the process that started it (Linux PR_SET_PDEATHSIG).

Flower's processes run in their own session so the runner can stop each one with its children as a
group. If the runner itself is killed with SIGKILL (a gateway killed hard), nothing would stop them:
this wrapper asks the kernel to send the child SIGTERM when its parent dies, then execs the real
command (same pid, so the runner still manages it as before). Usage:
``python -m federated.orphan_guard PARENT_PID COMMAND [ARGS...]``, or ``popen_guarded`` below.

The kernel's "parent" is the *thread* that forked: a SuperLink started from a short-lived thread
(a gateway starting its remote-mode SuperLink in the background) would get SIGTERM as soon as that
thread ended. So ``popen_guarded`` forks from one thread that lives as long as the process.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

PR_SET_PDEATHSIG = 1


def exit_with_parent(poll_s: float = 1.0, parent: int | None = None) -> threading.Thread:
    """Exit this process (code 70) once its parent is gone, checked every `poll_s` from a daemon
    thread. For a process its parent started and this module cannot wrap: Flower's ServerApp, a
    child of the SuperLink, whose own parent monitor raises SIGINT into a main thread that may sit
    in the Grid's retries against the gone SuperLink for minutes (seen in review).

    `parent`: the pid to watch instead of this process's own parent. A ClientApp run is the
    SuperExec's (Flower passes it as `--parent-pid`), but a warm one is forked from the warm server
    (federated/warm_clientapp.py), which outlives the SuperExec: with a job's runner killed mid-round,
    such runs sat blocked for minutes, deaf to the SIGINT Flower's monitor raised."""
    own = os.getppid()

    def gone() -> bool:
        if parent is None:
            return os.getppid() != own
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, as another user
            return False
        return False

    def watch() -> None:
        while not gone():
            time.sleep(poll_s)
        os._exit(70)  # no cleanup to wait for: whoever would receive it is gone

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the request took effect
            sys.exit(1)
    os.execv(command[0], command)  # noqa: S606 (our own Flower command line, no shell)


_requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], Future[subprocess.Popen[bytes]]]] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _spawn_forever() -> None:
    while True:
        cmd, kwargs, done = _requests.get()
        try:
            done.set_result(subprocess.Popen(cmd, **kwargs))
        except BaseException as exc:  # noqa: BLE001 # reported to the caller
            done.set_exception(exc)


def popen_guarded(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` of ``cmd`` under this guard, forked from the process-lifetime thread."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawn_forever, name="flower-spawner", daemon=True)
            _spawner.start()
    done: Future[subprocess.Popen[bytes]] = Future()
    _requests.put(([sys.executable, "-m", "federated.orphan_guard", str(os.getpid()), *cmd], kwargs, done))
    return done.result()


if __name__ == "__main__":
    main(sys.argv[1:])
