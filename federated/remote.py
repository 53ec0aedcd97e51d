"""The coordinator's side of a deployment across machines: a SuperLink on a fixed address that
agencies' own SuperNodes (`xgate node supernode`, federated/supernode_site.py) dial.

The coordinator knows each agency only by its CA-certified SuperNode public key. It registers
that key (`flwr supernode register`, which returns the node id), so node id -> agency comes from
the registration, never from anything a node says; it learns that a node is connected from
`flwr supernode list`. It never opens a node's store or ledger.

Lifetime (measured with flwr 1.41, see docs/FEDERATED.md "Deployment across machines"): a
SuperNode keeps retrying while its SuperLink is away, but a *new* SuperLink process (fresh state,
key registered again under a new node id) answers its next call with 401 and the SuperNode
exits. So the link is long-lived (one per gateway process, jobs submitted to it), and the
node-side wrapper restarts `flower-supernode` whenever it exits, which rejoins a restarted link.

Exposure: Flower serves its Fleet, Control and Runtime APIs on one port, the latter two without
authentication. So the SuperLink binds 127.0.0.1 on a free port (the coordinator's own `flwr` CLI
and ServerApps reach it there) and the agencies dial the Fleet gate
(`federated.fleet_gate_server`, its own process next to the SuperLink), which serves the public
address with the SuperLink's certificate and forwards Fleet API calls only.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crypto.flower_keys import FlowerSecurity, SuperNodeKey, load_public_key, verify_supernode_key
from federated.datasets import ElementInfo
from federated.deployment import Federation
from federated.fleet_gate import DEFAULT_MAX_BODY
from federated.jobs import Encoding
from federated.model import encoded_width, resolve
from policies.catalogue import Catalogue
from xgate.errors import ConfigError, IntegrityError, NodeProtocolError, NodeUnavailable, NotFound
from xgate.logging import get_logger

log = get_logger(__name__)
ONLINE = "online"
GATE = "fleet-gate"  # its process name in the Federation (logs/fleet-gate.log)
INTERNAL_HOST = "127.0.0.1"  # where the SuperLink itself listens in remote mode


@dataclass(frozen=True)
class RemoteNode:
    """An agency whose SuperNode runs on its own host: the coordinator holds only its public key."""

    agency: str
    public_key: Path  # OpenSSH public key line, what `flwr supernode register` reads
    certificate: Path | None = None  # its `flower-supernode` certificate: checked before registration
    datasets: tuple[str, ...] = ()  # registered training datasets it serves; () = takes part in every job

    def key(self) -> SuperNodeKey:
        # The private key never leaves the agency: registration and verification read the public side only.
        return SuperNodeKey(self.agency, Path(os.devnull), self.public_key, self.certificate)


def select_participants(nodes: Sequence[RemoteNode], job_datasets: Sequence[str] | None) -> list[RemoteNode]:
    """The nodes a job needs: those serving one of the job's registered datasets (or serving any)."""
    if job_datasets is None:
        return list(nodes)
    wanted = set(job_datasets)
    return [n for n in nodes if not n.datasets or wanted & set(n.datasets)]


def catalogue_width(
    catalogue: Catalogue, features: Sequence[str], encodings: Mapping[str, Encoding] | None = None
) -> int:
    """Encoded model width from the catalogue's declared types and ranges (what every node encodes)."""
    infos = catalogue_infos(catalogue, features)
    return sum(encoded_width(i, e) for i, e in zip(infos, resolve(infos, encodings), strict=True))


def catalogue_infos(catalogue: Catalogue, features: Sequence[str]) -> list[ElementInfo]:
    """The features' declared types and ranges, as every node declares them."""
    infos = []
    for feature in features:
        try:
            element = catalogue.get(feature)
        except NotFound:
            raise ConfigError(
                f"feature '{feature}' is not in the federation catalogue: the coordinator cannot size the model"
            ) from None
        infos.append(ElementInfo(element.id, element.type.value, element.min, element.max))
    return infos


def attested_digests(summary: Mapping[str, Any], node_ids: Mapping[int, str]) -> dict[str, str]:
    """agency -> data digest, as each node reported it in its ClientApp replies (ServerApp summary).

    The agency is the one its node id was registered for; a node claiming another agency, or a node
    that is not part of the job, is an integrity failure.
    """
    out: dict[str, str] = {}
    for node_id, entry in dict(summary.get("data_digests") or {}).items():
        agency = node_ids.get(int(node_id))
        if agency is None:
            raise IntegrityError(f"node {node_id} is not part of this job but reported data")
        if str(entry.get("agency")) != agency:
            raise IntegrityError(f"the node registered for agency '{agency}' reports agency '{entry.get('agency')}'")
        out[agency] = str(entry["data_sha256"])
    return out


def _dial(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 (a bind-all address is dialled on loopback)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise ConfigError(f"SuperLink address {host}:{port} is already in use") from None


class RemoteLink:
    """A SuperLink serving SuperNodes on other hosts through the Fleet gate on a fixed host:port;
    jobs are submitted to it.

    `security`: its TLS material (the SuperLink certificate must name the address the agencies dial,
    and 127.0.0.1, which the gate and the coordinator's own `flwr` CLI dial). `max_body_bytes`
    bounds one Fleet request at the gate. Context manager: closing stops the gate, the SuperLink
    and every process in their groups.
    """

    def __init__(
        self, state_dir: Path, security: FlowerSecurity, host: str, port: int, *, max_body_bytes: int = DEFAULT_MAX_BODY
    ) -> None:
        if not 0 < port < 65536:
            raise ConfigError("a remote SuperLink needs a fixed port (1-65535): the agencies' SuperNodes dial it")
        self.host, self.port, self.max_body_bytes = host, port, max_body_bytes
        # The SuperLink on loopback (a free port at start): its Control and Runtime APIs stay on this host.
        self.fed = Federation(state_dir, replace(security, supernode_keys={}), host=INTERNAL_HOST)
        self._public: dict[str, bytes] = {}

    def __enter__(self) -> RemoteLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """The public address (the gate) the agencies' SuperNodes dial."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> RemoteLink:
        self.fed.job_dir.mkdir(parents=True, exist_ok=True)
        _check_port_free(self.host, self.port)
        self.fed.start_superlink(timeout)
        self._start_gate(timeout)
        log.info("flower_remote_superlink_started", address=self.address, superlink=self.fed.address)
        return self

    def _start_gate(self, timeout: float) -> None:
        """The Fleet gate on the public address, once the SuperLink listens; returns once it listens."""
        security = self.fed.security
        assert security is not None  # RemoteLink never runs insecure
        cmd = [
            sys.executable,
            "-m",
            "federated.fleet_gate_server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--upstream-port",
            str(self.fed.port),
            "--ca",
            str(security.ca_cert.resolve()),
            "--cert",
            str(security.superlink_cert.resolve()),
            "--key",
            str(security.superlink_key.resolve()),
            "--max-body-bytes",
            str(self.max_body_bytes),
        ]
        self.fed.spawn(GATE, cmd, self.fed.job_dir / GATE)
        proc = self.fed.procs[GATE]
        deadline = time.monotonic() + timeout
        while True:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{GATE} exited with code {proc.popen.returncode} (see {proc.log_path})")
            try:
                with socket.create_connection((_dial(self.host), self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the Fleet gate did not start listening in time") from None
                time.sleep(0.2)

    def running(self) -> bool:
        """Both the SuperLink and its gate are alive."""
        procs = self.fed.procs
        return all(name in procs and procs[name].popen.poll() is None for name in ("superlink", GATE))

    def register(self, nodes: Sequence[RemoteNode]) -> dict[str, int]:
        """agency -> node id; keys not yet registered are checked (certificate, if any) and registered."""
        security = self.fed.security
        assert security is not None  # RemoteLink never runs insecure
        new: dict[str, SuperNodeKey] = {}
        for n in nodes:
            public = n.public_key.read_bytes() if n.public_key.is_file() else b""
            if n.agency in self.fed.registered:
                if public != self._public[n.agency]:
                    raise ConfigError(f"SuperNode key of agency '{n.agency}' changed: restart the SuperLink to rotate")
                continue
            if n.certificate is not None:
                verify_supernode_key(n.key(), security.ca_cert, security.crl)  # CryptoError names what failed
            else:
                load_public_key(n.public_key)  # pinned by configuration; still must be a key Flower reads
            new[n.agency] = n.key()
            self._public[n.agency] = public
        if new:
            try:
                self.fed.register_nodes(new)
            except RuntimeError as exc:
                raise NodeUnavailable("federation", str(exc)[:300]) from None
        return {n.agency: self.fed.registered[n.agency] for n in nodes}

    def statuses(self) -> dict[int, str]:
        try:
            return self.fed.control.supernodes()
        except RuntimeError as exc:
            raise NodeProtocolError("federation", str(exc)[:300]) from None

    def wait_online(self, node_ids: Mapping[int, str], timeout: float, poll_s: float = 0.5) -> None:
        """Return once every node id is online; NodeUnavailable naming the agencies that are not."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.statuses()
            missing = {a: statuses.get(i, "unknown") for i, a in node_ids.items() if statuses.get(i) != ONLINE}
            if not missing:
                return
            if time.monotonic() >= deadline:
                why = {"registered": "registered, never connected", "offline": "connected before, now offline"}
                names = ", ".join(f"{a} ({why.get(s, s)})" for a, s in sorted(missing.items()))
                raise NodeUnavailable(
                    "federation", f"SuperNodes not online after {timeout:.0f} s: {names}", missing=sorted(missing)
                )
            time.sleep(poll_s)

    def close(self) -> None:
        self.fed.close()  # the gate first, then the SuperLink (Federation stops "superlink" last)
        log.info("flower_remote_superlink_stopped", address=self.address)

    def leftover_processes(self) -> list[tuple[int, int]]:
        return self.fed.leftover_processes()
