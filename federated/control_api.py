"""The SuperLink's Control API, called in-process with Flower's own client (`ControlHttpClient`).

Each call was a `flwr` CLI process before: about 1 s of CPU and 1.5-2.5 s of wall time spent
importing Flower's CLI, for a request the SuperLink answers in milliseconds, and a job made seven of
them (one registration per SuperNode, then run, ls, log). The requests are those the CLI makes
(Flower 1.41: flwr/cli/run/run.py, ls.py, log.py, stop.py, supernode/register.py and ls.py), over
the same HTTPS, verifying the SuperLink against the same CA. The `flwr` CLI stays the operator's
tool: each Federation still writes its config.toml (federated/deployment.py).

Every failure raises RuntimeError naming the call and the SuperLink's reason, as the CLI wrapper did.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.build import build_fab_from_disk
from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
from flwr.cli.config_utils import load_and_validate
from flwr.common.constant import FAB_CONFIG_FILE
from flwr.common.serde import fab_to_proto, run_from_proto, user_config_to_proto
from flwr.proto.control_pb2 import (
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StartRunRequest,
    StopRunRequest,
    StreamLogsRequest,
)
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.fab import Fab
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

T = TypeVar("T")
COMPONENT = "flwr CLI"  # the SuperLink checks the caller's Flower version as it does the CLI's


@dataclass(frozen=True)
class RunInfo:
    """A run as `flwr ls` shows it: "pending", "running", "finished:completed", "finished:failed"..."""

    status: str
    total_bytes: int  # network traffic between the SuperLink and the SuperNodes, both ways


@dataclass(frozen=True)
class ControlApi:
    """One SuperLink's Control API at `address`, verified against `ca_cert` (or plain HTTP when insecure)."""

    address: str
    ca_cert: Path | None
    insecure: bool = False

    @contextmanager
    def _client(self) -> Iterator[ControlHttpClient]:
        client = ControlHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.insecure,
            root_certificates=None if self.ca_cert is None else self.ca_cert.read_bytes(),
            interceptors=[CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(component_name=COMPONENT)],
        )
        try:
            yield client
        finally:
            client.close()

    def _call(self, what: str, request: Callable[[ControlHttpClient], T]) -> T:
        try:
            with self._client() as client:
                return request(client)
        except httpx.HTTPStatusError as exc:
            raise RuntimeError(f"{what} failed: {exc.response.text.strip()[-400:] or exc}") from None
        except (httpx.HTTPError, ValueError, OSError) as exc:
            raise RuntimeError(f"{what} failed: {str(exc)[-400:]}") from None

    def register_node(self, public_key: Path) -> int:
        """Register a SuperNode's OpenSSH EC public key; its node id."""
        try:
            key = serialization.load_ssh_public_key(public_key.read_bytes())
        except (OSError, ValueError, UnsupportedAlgorithm):
            raise RuntimeError(f"register {public_key.name} failed: not an OpenSSH public key file") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise RuntimeError(f"register {public_key.name} failed: not an EC public key")
        request = RegisterNodeRequest(public_key=public_key_to_bytes(key))
        node_id = self._call("register", lambda c: c.RegisterNode(request=request).node_id)
        if not node_id:
            raise RuntimeError("register failed: the SuperLink gave no node id")
        return int(node_id)

    def start_run(self, app_dir: Path) -> int:
        """Build the App's FAB and start a run of it; the run id."""
        try:
            load_and_validate(app_dir / FAB_CONFIG_FILE, check_module=False)
            with warnings.catch_warnings():
                # Flower's FAB builder still uses pathspec's deprecated `gitwildmatch` name.
                warnings.filterwarnings("ignore", category=DeprecationWarning, module="pathspec")
                fab_bytes = build_fab_from_disk(app_dir)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"run failed: {str(exc)[-400:]}") from None
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        request = StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto({}), federation="")
        response = self._call("run", lambda c: c.StartRun(request))
        if not response.HasField("run_id"):
            raise RuntimeError("run failed: the SuperLink started no run")
        return int(response.run_id)

    def run_info(self, run_id: int) -> RunInfo | None:
        """The run's status and traffic (a run the SuperLink does not know is refused: RuntimeError)."""
        response = self._call("ls", lambda c: c.ListRuns(ListRunsRequest(run_id=run_id)))
        for proto in response.run_dict.values():
            run = run_from_proto(proto)
            status = run.status.status + (f":{run.status.sub_status}" if run.status.sub_status else "")
            return RunInfo(status, run.bytes_recv + run.bytes_sent)
        return None

    def logs(self, run_id: int, timeout_s: float = 30.0) -> str:
        """The run's log so far (the first answer of the log stream, as `flwr log --show` prints it).

        The stream has no read timeout and answers nothing while a running run has logged nothing:
        it is read by a daemon thread, given up after `timeout_s` (the connection is closed then)."""
        got: list[str] = []
        failed: list[BaseException] = []

        def first(client: ControlHttpClient) -> None:
            try:
                for response in client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=0.0)):
                    got.append(str(response.log_output))
                    return
                got.append("")
            except Exception as exc:  # noqa: BLE001 (handed to the caller's thread below)
                failed.append(exc)

        with self._client() as client:
            reader = threading.Thread(target=first, args=(client,), name="flower-log-stream", daemon=True)
            reader.start()
            reader.join(timeout_s)
        if got:
            return got[0]
        if failed:
            raise RuntimeError(f"log failed: {str(failed[0])[-400:]}")
        raise RuntimeError(f"log failed: no answer within {timeout_s:.0f} s")

    def stop_run(self, run_id: int) -> None:
        self._call("stop", lambda c: c.StopRun(StopRunRequest(run_id=run_id)))

    def supernodes(self) -> dict[int, str]:
        """node id -> status ("registered", "online", "offline", "unregistered")."""
        response = self._call("supernode list", lambda c: c.ListNodes(ListNodesRequest()))
        return {int(n.node_id): str(n.status) for n in response.nodes_info}
