"""A real Flower deployment on loopback: one `flower-superlink`, one `flower-supernode` per agency
node; registration, submission, status, logs and stop through the SuperLink's Control API, called
in-process with Flower's own client (federated/control_api.py) as the `flwr` CLI calls it.

The SuperLink binds `host` (127.0.0.1 by default) on a free port. Every process is started in its
own session (process group) and the whole group is terminated on exit, error or timeout, so the
SuperExec/ClientApp/ServerApp children Flower spawns never outlive the job.

Transport (crypto/flower_keys.py): the SuperLink serves its Fleet, Control and Runtime APIs over
HTTPS with a CA-issued certificate and `--enable-supernode-auth`; each SuperNode's CA-certified
public key is registered (as `flwr supernode register` does) before the SuperNode starts, and
SuperNodes and Control API calls verify the SuperLink against the CA. Plain HTTP (`--insecure`) happens only
when a caller passes insecure=True explicitly, and is logged as `flower_insecure`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import tomli_w

from crypto.flower_keys import FlowerSecurity, SuperNodeKey, verify_flower_security
from federated.node import NodeConfig, node_config_arg
from federated.orphan_guard import popen_guarded
from xgate.errors import ConfigError
from xgate.logging import get_logger

if TYPE_CHECKING:  # Flower's client and CLI modules: imported when a Control API call is made
    from federated.control_api import ControlApi, RunInfo

log = get_logger(__name__)
BIN = Path(sys.executable).parent
# Flower's `flower-supernode`, with its fixed 3 s idle poll shortened (federated/supernode_process.py).
SUPERNODE = [sys.executable, "-m", "federated.supernode_process"]
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")


Tls = FlowerSecurity  # the earlier name, kept for importers


@dataclass(frozen=True)
class NodeSpec:
    """An agency node: its store and admission ledger stay with it (passed only to its SuperNode)."""

    agency: str
    store: Path
    ledger: Path
    holdout: Path | None = None
    policy_dir: Path | None = None  # given: the node's ClientApp decides admission itself at its site


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
    # Set to 1, these make flower-superlink also open legacy gRPC Control/Fleet servers on 0.0.0.0.
    for legacy in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
        env.pop(legacy, None)
    return env


def _check_mode(security: FlowerSecurity | None, insecure: bool) -> None:
    if security is not None and insecure:
        raise ConfigError("insecure=True conflicts with the Flower TLS material given")
    if security is None and not insecure:
        raise ConfigError("Flower needs TLS material (FlowerSecurity); plain HTTP only with insecure=True")


def superlink_flags(security: FlowerSecurity | None, insecure: bool = False) -> list[str]:
    """One certificate for all SuperLink APIs; only registered SuperNode keys are activated."""
    _check_mode(security, insecure)
    if security is None:
        return ["--insecure"]
    return [
        "--ssl-ca-certfile",
        str(security.ca_cert.resolve()),
        "--ssl-certfile",
        str(security.superlink_cert.resolve()),
        "--ssl-keyfile",
        str(security.superlink_key.resolve()),
        "--enable-supernode-auth",
    ]


def supernode_flags(security: FlowerSecurity | None, key: SuperNodeKey | None, insecure: bool = False) -> list[str]:
    _check_mode(security, insecure)
    if security is None:
        return ["--insecure"]
    if key is None:
        raise ConfigError("a SuperNode needs its authentication key when the SuperLink requires SuperNode auth")
    return [
        "--root-certificates",
        str(security.ca_cert.resolve()),
        "--auth-supernode-private-key",
        str(key.private_key.resolve()),
    ]


def cli_config(address: str, security: FlowerSecurity | None, insecure: bool = False) -> dict[str, Any]:
    """The `flwr` CLI's config.toml with one SuperLink connection named `xgate`."""
    _check_mode(security, insecure)
    conn: dict[str, Any] = {"address": address}
    if security is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(security.ca_cert.resolve())
    return {"superlink": {"default": "xgate", "xgate": conn}}


def _json_payload(out: str) -> dict[str, Any]:
    try:
        payload = json.loads(out[out.index("{") :])
    except ValueError:
        raise RuntimeError(f"flwr printed no JSON: {out.strip()[-200:]}") from None
    return dict(payload)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_fh: IO[bytes]
    log_start: int = 0  # where this process's lines begin: a job id run again appends to its logs

    def output(self) -> str:
        """What this process has logged (not what an earlier run of the job logged before it)."""
        with self.log_path.open("rb") as fh:
            fh.seek(self.log_start)
            return fh.read().decode(errors="replace")


@dataclass
class Federation:
    """The running SuperLink and SuperNodes of one job (context manager; always cleans up)."""

    job_dir: Path
    security: FlowerSecurity | None = None
    port: int = 0
    procs: dict[str, _Proc] = field(default_factory=dict)
    node_ids: dict[int, str] = field(default_factory=dict)
    insecure: bool = False
    host: str = "127.0.0.1"  # where the SuperLink listens and SuperNodes/CLI dial (SuperLink cert SAN)
    registered: dict[str, int] = field(default_factory=dict)  # agency -> node id from registration

    def __post_init__(self) -> None:
        _check_mode(self.security, self.insecure)
        if self.insecure:
            log.warning("flower_insecure", job_dir=str(self.job_dir), reason="explicit insecure=True")

    def __enter__(self) -> Federation:
        return self

    @property
    def address(self) -> str:
        dial = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104 (a dial target)
        return f"{dial}:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self, name: str, cmd: list[str], home: Path) -> None:
        """Start `cmd` as this federation's process `name` (stopped by close(), seen by leftover_processes())."""
        home.mkdir(parents=True, exist_ok=True)
        log_path = self.job_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = log_path.open("ab")
        start = fh.tell()
        # Own session: stopped as a group with its children. orphan_guard: dies with us, even on SIGKILL.
        popen = popen_guarded(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=flwr_env(home), cwd=self.job_dir, start_new_session=True
        )
        self.procs[name] = _Proc(name, popen, log_path, fh, start)

    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start the SuperLink, write the CLI config and register every SuperNode key it should accept."""
        if self.security is not None:
            verify_flower_security(self.security)  # fail closed before anything listens
        self.port = self.port or free_port()  # a fixed port when SuperNodes elsewhere dial it
        cmd = [
            str(BIN / "flower-superlink"),
            *superlink_flags(self.security, self.insecure),
            "--isolation",
            "subprocess",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        self.spawn("superlink", cmd, self.job_dir / "flwr-home")
        host, port = self.address.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("superlink")
            try:
                with socket.create_connection((host, int(port)), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("SuperLink did not start listening in time") from None
                time.sleep(0.2)
        self.write_cli_config()
        if self.security is not None and self.security.supernode_keys:
            self.register_nodes(self.security.supernode_keys)

    def register_nodes(self, keys: Mapping[str, SuperNodeKey]) -> dict[str, int]:
        """Register each public key on the SuperLink (Control API); it activates only these."""
        failed = []
        for agency, k in keys.items():
            try:
                self.registered[agency] = self.control.register_node(k.public_key.resolve())
            except RuntimeError as exc:
                failed.append(f"{agency}: {str(exc)[-200:]}")
        if failed:
            raise RuntimeError("SuperNode registration failed: " + "; ".join(failed))
        log.info("flower_supernodes_registered", agencies=sorted(keys), job_dir=str(self.job_dir))
        return dict(self.registered)

    def start_node(self, node: NodeSpec, key: SuperNodeKey | None = None) -> None:
        """Start a SuperNode; `key` overrides the agency's key in the security material (tests)."""
        if key is None and self.security is not None:
            key = self.security.supernode_keys.get(node.agency)
        client = NodeConfig(node.store, node.agency, node.ledger, node.holdout, node.policy_dir)
        if self.security is not None:
            # The ClientApp checks its peers' PSI agreement keys against the CA (psi_keys), and signs
            # its own with this key when the CA certified it.
            client = dataclasses.replace(client, ca_cert=self.security.ca_cert, crl=self.security.crl)
            if key is not None and key.certificate is not None:
                client = dataclasses.replace(client, identity_key=key.private_key, identity_cert=key.certificate)
        cfg = node_config_arg(client)
        cmd = [
            *SUPERNODE,
            *supernode_flags(self.security, key, self.insecure),
            "--superlink",
            self.address,
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
        self.spawn(f"node-{node.agency}", cmd, self.job_dir / "nodes" / node.agency / "flwr-home")

    def wait_registered(self, agencies: Sequence[str], timeout: float = 60.0) -> dict[int, str]:
        """Map Flower node ids to agencies once every SuperNode has connected."""
        deadline = time.monotonic() + timeout
        pending = set(agencies)
        while pending and time.monotonic() < deadline:
            for agency in list(pending):
                self._check_alive(f"node-{agency}")
                m = _NODE_ID.search(self.procs[f"node-{agency}"].output())
                if m:
                    node_id = int(m.group(1))
                    if agency in self.registered and self.registered[agency] != node_id:
                        raise RuntimeError(f"SuperNode of {agency} came up as a node it was not registered as")
                    self.node_ids[node_id] = agency
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
        cfg = cli_config(self.address, self.security, self.insecure)
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
        # With --format json flwr exits 0 even when it failed (e.g. TLS refused): read its verdict.
        if "json" in args and _json_payload(out.stdout).get("success") is False:
            reason = str(_json_payload(out.stdout).get("error-message", "")).strip()
            raise RuntimeError(f"flwr {args[0]} failed: {reason[-400:]}")
        return out.stdout

    @property
    def control(self) -> ControlApi:
        """The SuperLink's Control API, called in-process (federated/control_api.py)."""
        from federated.control_api import ControlApi

        ca = None if self.security is None else self.security.ca_cert.resolve()
        return ControlApi(self.address, ca, insecure=self.insecure)

    def submit(self, app_dir: Path) -> int:
        return self.control.start_run(app_dir)

    def run_info(self, run_id: int) -> RunInfo | None:
        return self.control.run_info(run_id)

    def logs(self, run_id: int) -> str:
        try:
            return self.control.logs(run_id)
        except RuntimeError as exc:
            return f"(logs unavailable: {exc})"

    def stop_run(self, run_id: int) -> None:
        with contextlib.suppress(RuntimeError):
            self.control.stop_run(run_id)

    # -- shutdown -----------------------------------------------------------------------------

    def _stop(self, proc: _Proc, sig: int = signal.SIGTERM) -> None:
        self._signal(proc, sig)
        self._reap(proc)

    @staticmethod
    def _signal(proc: _Proc, sig: int = signal.SIGTERM) -> None:
        # The whole group we created: SuperExec, ServerApp/ClientApp children.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, sig)

    @staticmethod
    def _reap(proc: _Proc) -> None:
        """Wait for a signalled process, then make sure (SIGKILL to its group)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)
        if not proc.log_fh.closed:
            proc.log_fh.close()

    def close(self) -> None:
        # Every SuperNode is signalled at once (each takes most of a second to deactivate and stop),
        # then the SuperLink they deactivate with.
        nodes = [p for name, p in self.procs.items() if name != "superlink"]
        for proc in nodes:
            self._signal(proc)
        for proc in nodes:
            self._reap(proc)
        if "superlink" in self.procs:
            self._stop(self.procs["superlink"])
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
