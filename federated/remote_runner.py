"""One job on a `RemoteLink`: the agencies' SuperNodes run on their own hosts from their own configs.

What the coordinator needs and where it comes from, without any node's store or ledger:
* participants: the caller's `RemoteNode`s (the gateway selects them from the job's registered
  datasets, `remote.select_participants`); node id -> agency from registering their keys;
* horizontal model width: the federation catalogue's declared types and ranges of the job's
  features (what each node's loader validated its data against); every ClientApp checks its own
  encoding has that width and refuses the job otherwise;
* SecAgg+'s `max_weight`: the job's `max_weight` or the configured bound (`RemoteMode.max_weight`);
  nodes cap their example weight at it (logged), so the bound is safe, only less precise if loose;
* data digests: reported by each ClientApp (`data_sha256`) and checked against the registration;
* admission: each node's own (`admit_at_node`: its Cedar policy set and ε ledger) plus whatever
  the caller decided before (the gateway's Cedar `train` and ε charge). No coordinator-side
  admission opens a node's ledger here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from crypto.flower_keys import FlowerSecurity
from federated.deployment import Federation
from federated.events import OnEvent
from federated.fleet_gate import DEFAULT_MAX_BODY
from federated.job_run import JobResult, finish, follow_run, start_job, write_app
from federated.jobs import JobSpec, Mode
from federated.remote import (
    RemoteLink,
    RemoteNode,
    attested_digests,
    catalogue_infos,
    catalogue_width,
    select_participants,
)
from policies.catalogue import Catalogue
from xgate.errors import ConfigError, PolicyDenied
from xgate.logging import get_logger

log = get_logger(__name__)

ADMISSION = "at each node: its own policy set and ε ledger (admit_at_node)"


@dataclass(frozen=True)
class RemoteMode:
    link: RemoteLink  # started; outlives the job
    catalogue: Catalogue  # sizes the horizontal model
    max_weight: int | None = None  # bound on one node's example weight when the job names none
    connect_timeout_s: float = 120.0  # how long registered SuperNodes may take to be online


def job_shape(job: JobSpec, remote: RemoteMode) -> tuple[int, int]:
    """(encoded width, max_weight) of a job, from the catalogue and the job/configured bound."""
    if job.mode is not Mode.HORIZONTAL:
        return 0, job.max_weight or remote.max_weight or 1  # vertical: neither is used
    max_weight = job.max_weight or remote.max_weight
    if max_weight is None:
        raise ConfigError(
            "a horizontal job on remote nodes needs max_weight (in the job or the training config):"
            " the coordinator cannot count the nodes' subjects"
        )
    return catalogue_width(remote.catalogue, job.features, job.encodings), max_weight


def run_remote_job(
    job: JobSpec,
    nodes: Sequence[RemoteNode],
    *,
    job_dir: Path,
    remote: RemoteMode,
    on_event: OnEvent | None = None,
    progress: Callable[[str], None] | None = None,
    on_started: Callable[[Federation], None] | None = None,
    on_federation: Callable[[Federation], None] | None = None,
) -> JobResult:
    """Run `job` on `remote.link` with these participants (see `federated.runner.run_job`).

    Raises PolicyDenied when fewer nodes than `min_nodes` serve the job, NodeUnavailable when a
    participant's SuperNode is not online within `connect_timeout_s` (naming it) or the run fails.
    """
    t0 = time.monotonic()
    emit, status = start_job(job, job_dir, on_event)
    say = progress or (lambda _line: None)
    if len(nodes) < job.min_nodes:
        reason = f"{len(nodes)} nodes serve the job's datasets, job needs {job.min_nodes}"
        status.update(state="refused", reason=reason)
        raise PolicyDenied(f"job '{job.job_id}' refused: {reason}")
    result = JobResult(job.job_id, None, "failed", job_dir)
    status.update(state="starting")  # waiting for the agencies' SuperNodes
    link = remote.link
    try:
        if on_federation is not None:
            on_federation(link.fed)
        width, max_weight = job_shape(job, remote)
        registered = link.register(nodes)
        node_ids = {registered[n.agency]: n.agency for n in nodes}
        say(f"waiting for {len(nodes)} SuperNodes on {link.address}")
        link.wait_online(node_ids, remote.connect_timeout_s)
        app_dir = write_app(
            job,
            job_dir,
            n_nodes=len(nodes),
            max_weight=max_weight,
            n_features=width,
            feature_infos=catalogue_infos(remote.catalogue, job.features) if job.mode is Mode.HORIZONTAL else (),
            node_ids=sorted(node_ids),
        )
        if on_started is not None:
            on_started(link.fed)
        follow_run(link.fed, job, app_dir, node_ids, result, emit, status, say)
        digests = attested_digests(json.loads((job_dir / "server-summary.json").read_text()), node_ids)
    except Exception as exc:
        emit.fail(exc)  # once: a failure the ServerApp reported is already recorded
        status.update(state="failed", reason=str(exc)[:300])
        raise
    return finish(job, result, t0, {}, digests, emit, status, admission=ADMISSION, data_digests_source="node")


class RemoteTraining:
    """A coordinator's remote mode for its whole lifetime: one SuperLink behind its Fleet gate on a
    fixed address, started once (and again if either died), every configured node's key registered,
    jobs submitted to it.

    Thread-safe; `close()` stops the SuperLink and its process group (gateway shutdown).
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        security: FlowerSecurity,
        host: str,
        port: int,
        nodes: Sequence[RemoteNode],
        catalogue: Catalogue,
        max_weight: int | None = None,
        connect_timeout_s: float = 120.0,
        max_body_bytes: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.state_dir, self.security, self.host, self.port = state_dir, security, host, port
        self.max_body_bytes = max_body_bytes  # the Fleet gate's bound on one request body
        self.nodes = list(nodes)
        self.catalogue, self.max_weight, self.connect_timeout_s = catalogue, max_weight, connect_timeout_s
        self._lock = threading.Lock()
        self._link: RemoteLink | None = None
        self._closed = False

    def ensure_started(self) -> RemoteLink:
        """The running link; (re)started with every node registered when it is not running."""
        with self._lock:
            if self._closed:
                raise ConfigError("remote training is shut down")
            link = self._link
            if link is not None and link.running():
                return link
            if link is not None:  # died under us: a new process, a fresh registration
                link.close()
            self._link = RemoteLink(
                self.state_dir, self.security, self.host, self.port, max_body_bytes=self.max_body_bytes
            )
            try:
                self._link.start()
                self._link.register(self.nodes)
            except Exception:
                self._link.close()
                self._link = None
                raise
            return self._link

    def start_in_background(self) -> None:
        """Start now without blocking; a failure is logged, and retried (and reported) by the next job."""

        def start() -> None:
            try:
                self.ensure_started()
            except Exception as exc:  # noqa: BLE001  # the health loop must survive; next tick retries
                log.warning("flower_remote_superlink_unavailable", reason=str(exc)[:200])

        threading.Thread(target=start, name="remote-superlink", daemon=True).start()

    def participants(self, job_datasets: Sequence[str] | None) -> list[RemoteNode]:
        return select_participants(self.nodes, job_datasets)

    def mode(self) -> RemoteMode:
        link = self.ensure_started()
        return RemoteMode(link, self.catalogue, self.max_weight, self.connect_timeout_s)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            link, self._link = self._link, None
        if link is not None:
            link.close()
