"""Run a Flower process that dies with the process that started it (Linux PR_SET_PDEATHSIG).

Flower's processes run in their own session so the runner can stop each one with its children as a
group. If the runner itself is killed with SIGKILL (a gateway killed hard), nothing would stop them:
this wrapper asks the kernel to send the child SIGTERM when its parent dies, then execs the real
command (same pid, so the runner still manages it as before). Usage:
``python -m federated.orphan_guard PARENT_PID COMMAND [ARGS...]``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the request took effect
            sys.exit(1)
    os.execv(command[0], command)  # noqa: S606 (our own Flower command line, no shell)


if __name__ == "__main__":
    main(sys.argv[1:])
