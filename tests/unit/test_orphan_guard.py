"""orphan_guard.popen_guarded: a guarded process dies with its parent *process*, not with the
thread that asked for it (the kernel's parent-death signal follows the forking thread)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

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
