"""`flower-supernode` with short polls:
``python -m federated.supernode_process [--idle-poll-s S] [flower-supernode args]``.

Flower 1.41's SuperNode loop (`flwr/supernode/start_client_internal.py`) sleeps a fixed 3 s
whenever a pull from the SuperLink finds no message, and 0.5 s between looks for its ClientApp's
reply; neither is a flag or setting. In a training job every message waits for the next pull
after the SuperNode answered the previous one, so on average about half of 3 s per message went to
this sleep (measured in `docs/FEDERATED.md`, "Architecture"). This entry point runs Flower's own
`flower-supernode` command unchanged, except that the sleeps issued from that one module are
capped at `POLL_S` (or `--idle-poll-s`, which an agency sets as `[training] idle_poll_s`) while
messages flow, and the idle pull slowed to IDLE_POLL_S after IDLE_AFTER_S without one (`IdleBackoff`).
Everything else in the process sees the real `time` module. The `flwr-clientapp` it starts for
each message is xgate's (`clientapp_on_path`): xgate's installed ClientApps only, never code
carried by the job's app bundle (federated/clientapp_entry.py).

The cap is not a rate limit on anything a peer controls: it only shortens how long the SuperNode
waits before asking its own SuperLink again. Idle, a SuperNode pulls once a second (IDLE_POLL_S)
instead of a third of a time; `bench/training_startup.py` measures the CPU this costs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

POLL_S = 0.25  # Flower's fixed waits are 3 s (idle pull) and 0.5 s (reply)
FLOWER_IDLE_S = 3.0  # what Flower's loop asks to sleep after a pull that found no message
IDLE_AFTER_S = 5.0  # idle this long (no message answered), the loop pulls every IDLE_POLL_S
IDLE_POLL_S = 1.0
POLL_RANGE_S = (0.05, 3.0)  # 3 s: Flower's own
POLL_FLAG = "--idle-poll-s"
WARM_ENV = "XGATE_WARM_CLIENTAPPS"  # "0": every message gets a fresh flwr-clientapp process, as in Flower


class IdleBackoff:
    """How long Flower's SuperNode loop waits, given what it asked for.

    Flower waits 3 s after a pull that found no message (FLOWER_IDLE_S) and 0.5 s between looks for
    its ClientApp's reply. While messages flow both are capped at `cap`. A reply wait means a message
    is being answered; once the loop has done nothing but idle pulls for IDLE_AFTER_S, it pulls every
    IDLE_POLL_S instead: a link with no job then costs about half the CPU (0.104 cores against 0.187
    for a SuperLink and three SuperNodes, measured), and the first message after a pause waits at
    most IDLE_POLL_S more. `clock` is injectable for tests."""

    def __init__(self, cap: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap, self._clock = cap, clock
        self._idle_since: float | None = None

    def wait(self, asked: float) -> float:
        if asked < FLOWER_IDLE_S:  # waiting for a ClientApp's reply: a message is being answered
            self._idle_since = None
            return min(asked, self.cap)
        now = self._clock()
        if self._idle_since is None:
            self._idle_since = now
        slow = now - self._idle_since >= IDLE_AFTER_S
        return min(asked, max(self.cap, IDLE_POLL_S) if slow else self.cap)


class _ShortSleeps(ModuleType):
    """The `time` module as `start_client_internal` sees it: `sleep` as IdleBackoff decides."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self._backoff = IdleBackoff(cap)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(self._backoff.wait(seconds))


def shorten_polls(cap: float = POLL_S) -> ModuleType:
    """Cap the sleeps of Flower's SuperNode loop; returns the patched module (tests read it back).

    Refuses (RuntimeError) when the module no longer looks as this was written for: a Flower
    upgrade must be checked, not silently unpatched or wrongly patched."""
    from flwr.supernode import start_client_internal as loop

    if not isinstance(getattr(loop, "time", None), ModuleType) or not hasattr(loop, "start_client_internal"):
        raise RuntimeError("flwr.supernode.start_client_internal changed: review federated/supernode_process.py")
    loop.time = _ShortSleeps(cap)  # type: ignore[attr-defined] # module attribute, read at call time
    return loop


def poll_from_args(argv: list[str]) -> tuple[float, list[str]]:
    """Our own leading `--idle-poll-s S` (validated), and the arguments left for Flower."""
    if not argv or argv[0] != POLL_FLAG:
        return POLL_S, argv
    try:
        cap = float(argv[1])
    except (IndexError, ValueError):
        raise SystemExit(f"{POLL_FLAG} needs a number of seconds") from None
    lo, hi = POLL_RANGE_S
    if not lo <= cap <= hi:
        raise SystemExit(f"{POLL_FLAG} must be within {lo:g}..{hi:g} s, got {argv[1]}")
    return cap, argv[2:]


def clientapp_on_path() -> Path:
    """xgate's `flwr-clientapp` (federated/clientapp_entry.py: xgate's installed ClientApps only,
    never code from a job's app bundle) first on this process's PATH, where Flower's SuperExec
    finds the command it starts for each message; in a fresh 0700 directory removed at exit.
    Returns the script."""
    from federated import warm_clientapp

    home = Path(tempfile.mkdtemp(prefix="xgate-clientapp-"))
    atexit.register(shutil.rmtree, home, True)
    entry = warm_clientapp.install_entry(home)
    os.environ["PATH"] = f"{home}{os.pathsep}{os.environ.get('PATH', '')}"
    return entry


def main(argv: list[str]) -> None:
    cap, rest = poll_from_args(argv)
    shorten_polls(cap)
    entry = clientapp_on_path()  # never Flower's own `flwr-clientapp`, which loads the bundle's code
    if os.environ.get(WARM_ENV, "1") != "0":  # ClientApps forked warm (federated/warm_clientapp.py)
        from federated import warm_clientapp

        warm_clientapp.start(entry)  # its forwarder goes first on PATH and falls back to `entry`
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main(sys.argv[1:])
