"""Local mode for a coordinator's whole lifetime: one SuperLink and one SuperNode per local node,
started once and reused by every job (as remote mode's `RemoteTraining` does), so a job pays for
submitting its App, not for starting Flower's processes.

The SuperNodes read their agency's store, ledger and policies from the node config they were
started with, which does not change between jobs; each job names its participants' node ids in its
run config (`node-ids`), so the others stay idle. The link is started again, with fresh TLS
material, when any of its processes has died or its certificates are past half their life; never
while a job runs on it (the gateway runs one job at a time and asks for the link at a job's start).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crypto.flower_keys import FlowerSecurity, prepare_flower_security
from federated.deployment import Federation, NodeSpec
from xgate.errors import ConfigError
from xgate.logging import get_logger

log = get_logger(__name__)

CERT_DAYS = 2  # the link's Flower material; renewed (the link restarted) after one day
RENEW_AFTER = dt.timedelta(days=1)


@dataclass
class LocalLink:
    """A started SuperLink with every local node's SuperNode connected to it."""

    fed: Federation
    node_ids: dict[str, int]  # agency -> Flower node id
    started_at: dt.datetime
    startup_s: float  # what starting the processes took (paid once, not per job)
    jobs: int = field(default=0)  # jobs submitted to this link so far

    def running(self) -> bool:
        return all(p.popen.poll() is None for p in self.fed.procs.values())

    def take_job(self) -> dict[str, object]:
        """Count a job on this link; what its outputs record about the link it ran on."""
        self.jobs += 1
        return {
            "mode": "long-lived",
            "started_at": self.started_at.isoformat(),
            "startup_s": round(self.startup_s, 2),
            "job_on_link": self.jobs,
        }


class LocalTraining:
    """The long-lived local federation of a coordinator (the gateway in local mode); thread-safe.

    `close()` stops every process (gateway shutdown).
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        nodes: Sequence[NodeSpec],
        ca_dir: Path | None = None,
        connect_timeout_s: float = 120.0,
    ) -> None:
        if not nodes:
            raise ConfigError("local training needs at least one node")
        self.state_dir, self.nodes, self.ca_dir = state_dir, list(nodes), ca_dir
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._link: LocalLink | None = None
        self._closed = False

    def link(self) -> LocalLink:
        """The running link; (re)started when it is not running or its material is due for renewal."""
        with self._lock:
            if self._closed:
                raise ConfigError("local training is shut down")
            current = self._link
            now = dt.datetime.now(dt.UTC)
            if current is not None and current.running() and now - current.started_at < RENEW_AFTER:
                return current
            if current is not None:
                why = "renewal" if current.running() else "a process exited"
                log.info("flower_local_link_restarting", reason=why, jobs_served=current.jobs)
                current.fed.close()
                self._link = None
            self._link = self._start()
            return self._link

    def _start(self) -> LocalLink:
        t0 = time.monotonic()
        started_at = dt.datetime.now(dt.UTC)
        home = self.state_dir / started_at.strftime("link-%Y%m%dT%H%M%S%f")
        security: FlowerSecurity = prepare_flower_security(
            home / "pki", [n.agency for n in self.nodes], ca_dir=self.ca_dir, days=CERT_DAYS
        )
        fed = Federation(home, security)
        try:
            fed.start_superlink()
            for node in self.nodes:
                fed.start_node(node)
            by_id = fed.wait_registered([n.agency for n in self.nodes], timeout=self.connect_timeout_s)
        except Exception:
            fed.close()
            raise
        startup_s = time.monotonic() - t0
        log.info("flower_local_link_started", nodes=sorted(by_id.values()), startup_s=round(startup_s, 2))
        return LocalLink(fed, {a: i for i, a in by_id.items()}, started_at, startup_s)

    def start_in_background(self) -> None:
        """Start now without blocking; a failure is logged, and retried (and reported) by the next job."""

        def start() -> None:
            try:
                self.link()
            except Exception as exc:  # noqa: BLE001  # retried by the next job, which reports it
                log.warning("flower_local_link_unavailable", reason=str(exc)[:200])

        threading.Thread(target=start, name="local-superlink", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            current, self._link = self._link, None
        if current is not None:
            current.fed.close()
