"""Start and stop xgate processes (nodes, gateway) on loopback: used by the demo, tests and benches.

Each child announces readiness with one JSON line on stdout ({"event": "ready", "port": N});
we wait for it with a deadline and always reap children, so nothing is left running. Should the
process that started them die without reaping them (SIGKILL, an interrupted test run), each child
still dies with it: it runs under federated/orphan_guard.py (the kernel's parent-death signal).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from federated.orphan_guard import popen_guarded
from xgate.errors import ConfigError


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    announcement: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def port(self) -> int:
        return int(self.announcement["port"])

    def alive(self) -> bool:
        return self.process.poll() is None


def _read_ready(name: str, proc: subprocess.Popen[bytes], stdout: IO[bytes], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    buffer = b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"{name} exited with code {proc.returncode} before it was ready")
        ready, _, _ = select.select([stdout], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(stdout.fileno(), 65536)
        if not chunk:
            continue
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("event") == "ready":
                return message
    raise ConfigError(f"{name} did not become ready within {timeout_s:.0f} s")


class Supervisor:
    """Owns child processes; use as a context manager so they are always stopped."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.children: list[Child] = []
        self.log_dir = log_dir

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        timeout_s: float = 60.0,
        module: str = "app.cli",
    ) -> Child:
        """Start `python -m <module> <args>` and wait for its readiness line (`module`: the xgate CLI)."""
        full_env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1", **(env or {})}
        log_path = None
        stderr: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            stderr = log_path.open("ab")
        # Its own session (a terminal's Ctrl-C is ours to forward), and SIGTERM when we die.
        proc = popen_guarded(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=full_env,
            start_new_session=True,
        )
        child = Child(name, proc, log_path=log_path)
        self.children.append(child)
        assert proc.stdout is not None
        child.announcement = _read_ready(name, proc, proc.stdout, timeout_s)
        return child

    def stop(self, child: Child, grace_s: float = 5.0) -> None:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(5)
        if child.process.stdout is not None:
            child.process.stdout.close()

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child)
        self.children.clear()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()
