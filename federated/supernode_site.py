"""An agency's own Flower SuperNode (`xgate node supernode --config node.toml`), run on its own host.

Everything comes from the node's configuration (`[node]` store and agency, `[training]` table):
the SuperNode dials the gateway's SuperLink over TLS checked against the federation CA, proves its
identity with its CA-certified key, and its ClientApps read this node's store and decide admission
here (`admit_at_node`: the node's own policy set and ε ledger). Nothing but the key's public half
and its certificate is known at the gateway.

The wrapper supervises `flower-supernode`: a SuperNode exits when its SuperLink is replaced by a
new process (401 for its old node id), when its key is not (yet) registered (exit 305) or when
TLS fails, so it is restarted with a capped backoff until SIGTERM/SIGINT, which is forwarded to its
process group. `federated.orphan_guard` makes the SuperNode die with the wrapper even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto.flower_keys import FlowerSecurity, SuperNodeKey, load_private_key
from crypto.peers import load_cert, verify_peer_certificate
from federated.deployment import SUPERNODE, flwr_env, free_port, supernode_flags
from federated.node import NodeConfig as ClientNodeConfig
from federated.node import node_config_arg
from federated.supernode_process import POLL_FLAG, POLL_S
from xgate.errors import ConfigError, CryptoError
from xgate.logging import get_logger

log = get_logger(__name__)
BACKOFF_S = (1.0, 30.0)  # first and largest pause between restarts
STEADY_S = 60.0  # a SuperNode that ran this long resets the backoff


@dataclass(frozen=True)
class SupernodeSite:
    """What `flower-supernode` is started with; validated by `nodes.supernode.site_from_config`."""

    agency: str
    superlink: str
    ca_cert: Path
    supernode_key: Path
    client: ClientNodeConfig  # store, agency, ledger, holdout, policy_dir as the ClientApp reads them
    home: Path
    idle_poll_s: float = POLL_S  # how long the SuperNode waits before asking the SuperLink again


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"[training] {what}: file not found: {path}")
    return path


def check_supernode_key(key: Path, agency: str, ca_cert: Path, cert: Path | None, crl: Path | None) -> None:
    """The key is an unencrypted OpenSSH EC key only its owner can read; with `cert`, the CA certified
    exactly this key for this agency (valid, not expired, not revoked). ConfigError names the problem."""
    require_file(key, "supernode_key")
    if os.stat(key).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"[training] supernode_key: {key} is readable by others (chmod 600)")
    try:
        private = load_private_key(key)
    except CryptoError as exc:
        raise ConfigError(f"[training] supernode_key: {exc.message}") from None
    if cert is None:
        return
    try:
        certificate = load_cert(require_file(cert, "supernode_cert"))
        verify_peer_certificate(certificate, ca_cert, crl, agency, "flower-supernode")
    except CryptoError as exc:
        raise ConfigError(f"[training] supernode_cert does not verify against ca_cert: {exc.message}") from None
    if certificate.public_key() != private.public_key():
        raise ConfigError("[training] supernode_cert certifies another key than supernode_key")


def supernode_command(site: SupernodeSite, runtime_port: int) -> list[str]:
    """`flower-supernode` for this site; no retry limits: it waits for the SuperLink as long as it takes."""
    # Only the CA certificate matters at a SuperNode; the SuperLink's own material stays at the gateway.
    trust = FlowerSecurity(site.ca_cert, Path(os.devnull), Path(os.devnull))
    key = SuperNodeKey(site.agency, site.supernode_key, Path(os.devnull))
    return [
        *SUPERNODE,
        POLL_FLAG,
        str(site.idle_poll_s),
        *supernode_flags(trust, key),
        "--superlink",
        site.superlink,
        "--node-config",
        node_config_arg(site.client),
        "--host",
        "127.0.0.1",  # its Runtime API (SuperNode <-> its ClientApps) stays on this host
        "--port",
        str(runtime_port),
    ]


def next_backoff(previous: float, ran_s: float) -> float:
    """Pause before the next restart: doubled after a quick exit, reset after a steady run."""
    if ran_s >= STEADY_S:
        return BACKOFF_S[0]
    return min(BACKOFF_S[1], max(BACKOFF_S[0], previous * 2))


def run_supernode(site: SupernodeSite, stop: threading.Event | None = None) -> int:
    """Supervise `flower-supernode` until SIGTERM/SIGINT (or `stop`); returns the exit status (0)."""
    stop = stop or threading.Event()
    site.home.mkdir(parents=True, exist_ok=True)
    restore = _on_signals(stop.set)
    backoff = BACKOFF_S[0]
    try:
        while not stop.is_set():
            started = time.monotonic()
            cmd = [sys.executable, "-m", "federated.orphan_guard", str(os.getpid())]
            proc = subprocess.Popen(
                [*cmd, *supernode_command(site, free_port())],
                env=flwr_env(site.home),
                cwd=site.home,
                start_new_session=True,  # its own group: the SuperExec and ClientApps stop with it
            )
            log.info("supernode_started", agency=site.agency, superlink=site.superlink, pid=proc.pid)
            while proc.poll() is None and not stop.wait(0.2):
                pass
            if proc.poll() is None:
                _stop_group(proc)
                break
            ran = time.monotonic() - started
            backoff = next_backoff(backoff, ran)
            # Flower prints why above (e.g. "Exit Code: 305": key not registered; a 401 after a new SuperLink).
            log.warning("supernode_exited", agency=site.agency, code=proc.returncode, restart_in_s=round(backoff, 1))
            stop.wait(backoff)
    finally:
        restore()
    log.info("supernode_stopped", agency=site.agency)
    return 0


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the group that outlived the SuperNode
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _on_signals(handler: Callable[[], None]) -> Callable[[], None]:
    """Route SIGTERM/SIGINT to `handler` (main thread only); returns a function restoring the old ones."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in old:
        signal.signal(sig, lambda *_: handler())

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore
