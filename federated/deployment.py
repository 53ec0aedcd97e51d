"""A real Flower deployment on loopback: one `flower-superlink`, one `flower-supernode` per agency
node, submission with `flwr run`, status via `flwr ls`, logs via `flwr log`.

Everything binds to 127.0.0.1 on free ephemeral ports. Every process is started in its own
session (process group) and the whole group is terminated on exit, error or timeout, so the
SuperExec/ClientApp/ServerApp children Flower spawns never outlive the job.

Transport: `--insecure` for now. TLS is wired by the transport-security work through `Tls`
(SuperLink cert/key/CA, SuperNode root certificates, CLI root certificates); when given, the
flags below are emitted instead of `--insecure`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import tomli_w

BIN = Path(sys.executable).parent
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")


@dataclass(frozen=True)
class Tls:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeSpec:
    """An agency node: its store and admission ledger stay with it (passed only to its SuperNode)."""

    agency: str
    store: Path
    ledger: Path
    holdout: Path | None = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flwr_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            # SuperExec picks up ClientApp/ServerApp tasks every second by default.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
        }
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_fh: IO[bytes]


@dataclass
class Federation:
    """The running SuperLink and SuperNodes of one job (context manager; always cleans up)."""

    job_dir: Path
    tls: Tls | None = None
    port: int = 0
    procs: dict[str, _Proc] = field(default_factory=dict)
    node_ids: dict[int, str] = field(default_factory=dict)

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, name: str, cmd: list[str], home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        log_path = self.job_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = log_path.open("ab")
        popen = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=flwr_env(home), cwd=self.job_dir, start_new_session=True
        )
        self.procs[name] = _Proc(name, popen, log_path, fh)

    def _security(self, server: bool) -> list[str]:
        if self.tls is None:
            return ["--insecure"]  # TLS is added by the transport-security work (see module doc)
        if server:
            return [
                "--ssl-ca-certfile",
                str(self.tls.ca_cert),
                "--ssl-certfile",
                str(self.tls.server_cert),
                "--ssl-keyfile",
                str(self.tls.server_key),
            ]
        return ["--root-certificates", str(self.tls.ca_cert)]

    def start_superlink(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        cmd = [
            str(BIN / "flower-superlink"),
            *self._security(True),
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        self._spawn("superlink", cmd, self.job_dir / "flwr-home")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("superlink")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("SuperLink did not start listening in time")

    def start_node(self, node: NodeSpec) -> None:
        cfg = f"store='{node.store.resolve()}' agency='{node.agency}' ledger='{node.ledger.resolve()}'"
        if node.holdout is not None:
            cfg += f" holdout='{node.holdout.resolve()}'"
        cmd = [
            str(BIN / "flower-supernode"),
            *self._security(False),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--node-config",
            cfg,
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--max-retries",
            "5",
            "--max-wait-time",
            "60",
        ]
        self._spawn(f"node-{node.agency}", cmd, self.job_dir / "nodes" / node.agency / "flwr-home")

    def wait_registered(self, agencies: Sequence[str], timeout: float = 60.0) -> dict[int, str]:
        """Map Flower node ids to agencies once every SuperNode has connected."""
        deadline = time.monotonic() + timeout
        pending = set(agencies)
        while pending and time.monotonic() < deadline:
            for agency in list(pending):
                self._check_alive(f"node-{agency}")
                m = _NODE_ID.search(self.procs[f"node-{agency}"].log_path.read_text(errors="replace"))
                if m:
                    self.node_ids[int(m.group(1))] = agency
                    pending.discard(agency)
            time.sleep(0.2)
        if pending:
            raise TimeoutError(f"SuperNodes did not connect in time: {sorted(pending)}")
        return dict(self.node_ids)

    def _check_alive(self, name: str) -> None:
        code = self.procs[name].popen.poll()
        if code is not None:
            raise RuntimeError(f"{name} exited with code {code} (see {self.procs[name].log_path})")

    def kill_node(self, agency: str) -> None:
        """Simulate a node outage (tests): kill the SuperNode and its children."""
        self._stop(self.procs[f"node-{agency}"], sig=signal.SIGKILL)

    # -- flwr CLI ---------------------------------------------------------------------------

    def write_cli_config(self) -> None:
        conn: dict[str, Any] = {"address": f"127.0.0.1:{self.port}"}
        if self.tls is None:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(self.tls.ca_cert)
        cfg = {"superlink": {"default": "xgate", "xgate": conn}}
        (self.job_dir / "flwr-home" / "config.toml").write_text(tomli_w.dumps(cfg))

    def flwr(self, *args: str, timeout: float = 60.0) -> str:
        out = subprocess.run(
            [str(BIN / "flwr"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=flwr_env(self.job_dir / "flwr-home"),
            cwd=self.job_dir,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"flwr {args[0]} failed: {(out.stderr or out.stdout).strip()[-400:]}")
        return out.stdout

    def submit(self, app_dir: Path) -> int:
        out = self.flwr("run", str(app_dir), "xgate", "--format", "json", timeout=120)
        payload = json.loads(out[out.index("{") :])
        if not payload.get("success"):
            raise RuntimeError("SuperLink refused the run")
        return int(payload["run-id"])

    def run_info(self, run_id: int) -> dict[str, Any]:
        out = self.flwr("ls", "xgate", "--run-id", str(run_id), "--format", "json")
        data = json.loads(out[out.index("{") :])
        runs = data.get("runs", [])
        return dict(runs[0]) if runs else {}

    def logs(self, run_id: int) -> str:
        try:
            return self.flwr("log", str(run_id), "xgate", "--show", timeout=30)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return f"(logs unavailable: {exc})"

    def stop_run(self, run_id: int) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.flwr("stop", str(run_id), "xgate", timeout=30)

    # -- shutdown -----------------------------------------------------------------------------

    def _stop(self, proc: _Proc, sig: int = signal.SIGTERM) -> None:
        # Signal the whole group we created (SuperExec, ServerApp/ClientApp children), then make sure.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)
        if not proc.log_fh.closed:
            proc.log_fh.close()

    def close(self) -> None:
        for name in [n for n in self.procs if n != "superlink"] + ["superlink"]:
            if name in self.procs:
                self._stop(self.procs[name])
        deadline = time.monotonic() + 10
        while (left := self.leftover_processes()) and time.monotonic() < deadline:
            for pgid in {g for _, g in left}:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.2)

    def leftover_processes(self) -> list[tuple[int, int]]:
        """(pid, pgid) of live (non-zombie) processes still in the groups this federation created."""
        groups = {p.popen.pid for p in self.procs.values()}
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            state, pgid = fields[0], int(fields[2])
            if pgid in groups and state not in ("Z", "X"):
                out.append((int(stat.parent.name), pgid))
        return out
