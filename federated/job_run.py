"""The steps every federated job shares, local or remote: the Flower App directory, the job's
events and status file, following the run on the SuperLink, and the outputs when it ends.

federated/runner.py (local SuperNodes) and federated/remote_runner.py (SuperNodes on the agencies'
own hosts) both build on these; neither imports the other's internals.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from federated.datasets import ElementInfo
from federated.deployment import Federation
from federated.events import JsonlSink, OnEvent, make_event, read_events
from federated.jobs import JobSpec, Mode
from federated.pooled_stats import infos_to_config
from federated.results import write_outputs
from xgate.errors import NodeUnavailable

if TYPE_CHECKING:
    from federated.control_api import RunInfo

__all__ = [
    "FIRST_STATUS_S",
    "STATUS_POLL_S",
    "TERMINAL_EVENTS",
    "JobResult",
    "Status",
    "finish",
    "follow_run",
    "start_job",
    "write_app",
]


def write_app(
    job: JobSpec,
    job_dir: Path,
    *,
    n_nodes: int,
    max_weight: int,
    n_features: int = 0,
    feature_infos: Sequence[ElementInfo] = (),
    node_ids: Sequence[int] = (),
) -> Path:
    """A Flower App directory (pyproject only: the code is the installed `federated` package).

    `feature_infos`: the features' declared types and ranges (horizontal), which the ServerApp of a
    job that standardises needs to turn pooled moments into means and spreads (pooled_stats).
    `node_ids`: the only nodes the ServerApp may use (a SuperLink shared by several jobs has others).
    """
    app_dir = job_dir / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    if job.mode is Mode.HORIZONTAL:
        client = "federated.horizontal_client:" + ("secagg_app" if job.secagg else "app")
    else:
        client = "federated.vertical_client:app"
    config = {
        **job.run_config(job_dir),
        "nodes": n_nodes,
        "max-weight": max_weight,
        "n-features": n_features,
        "node-ids": ",".join(str(i) for i in sorted(node_ids)),  # a string: node ids are unsigned 64-bit
    }
    if job.standardises():
        config["feature-infos"] = infos_to_config(feature_infos)
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "xgate-job",
            "version": "1.0.0",
            "description": "xgate federated job",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "xgate",
                    "components": {"serverapp": "federated.server_app:app", "clientapp": client},
                    "config": config,
                }
            }
        },
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    (app_dir / "README.md").write_text(f"xgate job {job.job_id}\n")
    return app_dir


@dataclass
class JobResult:
    job_id: str
    run_id: int | None
    status: str
    job_dir: Path
    evaluation: dict[str, Any] = field(default_factory=dict)
    epsilon: float | None = None
    bytes_exchanged: int = 0
    wall_s: float = 0.0
    model_sha256: str | None = None


class JobEvents:
    """The job's event sink (events.jsonl, then `on_event`); records a job's failure once."""

    def __init__(self, job: JobSpec, job_dir: Path, on_event: OnEvent | None) -> None:
        self.job, self.sink, self.on_event = job, JsonlSink(job_dir / "events.jsonl"), on_event
        self.failed = False

    def __call__(self, event: dict[str, Any]) -> None:
        self.failed = self.failed or event.get("event") == "job_failed"
        self.sink(event)
        if self.on_event is not None:
            self.on_event(event)

    def fail(self, exc: BaseException) -> None:
        """`job_failed` for this exception, unless the ServerApp's own `job_failed` was already relayed."""
        if not self.failed:
            agency = {"agency": exc.agency} if isinstance(exc, NodeUnavailable) else {}
            reason = exc.message if isinstance(exc, NodeUnavailable) else str(exc)
            self(make_event(self.job.job_id, "job_failed", reason=reason[:300], **agency))


def start_job(job: JobSpec, job_dir: Path, on_event: OnEvent | None) -> tuple[JobEvents, Status]:
    """The job's event sink and status file; records `job_submitted`."""
    job_dir.mkdir(parents=True, exist_ok=True)
    emit = JobEvents(job, job_dir, on_event)
    status = Status(job_dir)
    emit(make_event(job.job_id, "job_submitted", job_digest=job.digest(), purpose=job.purpose, mode=job.mode.value))
    status.update(state="admission")
    return emit, status


def follow_run(
    fed: Federation,
    job: JobSpec,
    app_dir: Path,
    node_ids: Mapping[int, str],
    result: JobResult,
    emit: OnEvent,
    status: Status,
    say: Callable[[str], None],
) -> None:
    """Submit the App, relay the ServerApp's events (node ids -> agencies) until the run ends.

    Raises NodeUnavailable when the run fails or exceeds the job timeout (the run is then stopped).
    An earlier run's files (a failed job id submitted again) are set aside first (`_set_aside_earlier_run`).
    """
    job_dir, offset = result.job_dir, 0
    _set_aside_earlier_run(job_dir)
    result.run_id = fed.submit(app_dir)
    emit(make_event(job.job_id, "run_started", run_id=result.run_id, nodes=sorted(node_ids.values())))
    status.update(state="running", run_id=result.run_id)
    deadline = time.monotonic() + job.job_timeout_s

    def deliver(ev: dict[str, Any]) -> None:
        """A server event as the job's events carry it: node ids named by agency."""
        if "participants" in ev:
            ev["agencies"] = [node_ids.get(p, str(p)) if isinstance(p, int) else p for p in ev["participants"]]
        if "node_id" in ev and ev["node_id"] is not None:
            ev["agency"] = node_ids.get(int(ev["node_id"]), "unknown")
        emit(ev)
        if ev["event"] in ("round_completed", "round_evaluated"):
            say(_progress_line(job, ev))

    info: RunInfo | None = None
    next_status, terminal, state = time.monotonic() + FIRST_STATUS_S, False, ""
    while True:
        events, offset = read_events(job_dir / "server-events.jsonl", offset)
        terminal = terminal or any(ev["event"] in TERMINAL_EVENTS for ev in events)
        for ev in events:
            deliver(ev)
        now = time.monotonic()
        ending = terminal or (job_dir / "server-summary.json").exists()
        if now >= next_status:
            info = fed.run_info(result.run_id)
            state = "" if info is None else info.status
            if state.startswith("finished"):
                break
            next_status = now + (ENDING_POLL_S if ending else STATUS_POLL_S)
        elif ending:
            next_status = min(next_status, now + ENDING_POLL_S)
        if now > deadline:
            fed.stop_run(result.run_id)
            raise NodeUnavailable("federation", f"job timed out after {job.job_timeout_s:.0f} s")
        time.sleep(0.5)
    result.bytes_exchanged = 0 if info is None else info.total_bytes
    (job_dir / "run.log").write_text(fed.logs(result.run_id))
    events, offset = read_events(job_dir / "server-events.jsonl", offset)
    for ev in events:  # written between the last read and the run's end: named the same way
        deliver(ev)
    if state != "finished:completed":
        reason, agency = _failure(job_dir, node_ids)
        raise NodeUnavailable(agency, reason or f"run ended as {state}")


def finish(
    job: JobSpec,
    result: JobResult,
    t0: float,
    decisions: dict[str, Any],
    data_digests: Mapping[str, str],
    emit: OnEvent,
    status: Status,
    **extra: Any,
) -> JobResult:
    """Model metadata, report and curve from the ServerApp's summary; `job_completed`."""
    job_dir = result.job_dir
    summary = json.loads((job_dir / "server-summary.json").read_text())
    result.status, result.wall_s = "completed", time.monotonic() - t0
    result.evaluation = summary.get("evaluation", {})
    result.model_sha256 = summary.get("model_sha256")
    dp_summary = _with_unreported_nodes(job, summary.get("dp"), decisions, data_digests)
    if dp_summary is not None:
        summary["dp"] = dp_summary
    result.epsilon = (dp_summary or {}).get("epsilon")
    metadata = {
        "job_id": job.job_id,
        "job_digest": job.digest(),
        "job": job.model_dump(mode="json"),
        "run_id": result.run_id,
        "decisions": decisions,
        "model_sha256": result.model_sha256,
        "data_digests": dict(data_digests),
        "dp": dp_summary,
        **({"label_dp": summary["label_dp"]} if summary.get("label_dp") else {}),
        "evaluation": result.evaluation,
        "bytes_exchanged": result.bytes_exchanged,
        "wall_s": result.wall_s,
        "model_file": "model.npz",
        **({"standardisation": summary["standardisation"]} if "standardisation" in summary else {}),
        **extra,
    }
    write_outputs(job_dir, metadata, summary)
    emit(
        make_event(
            job.job_id,
            "job_completed",
            model_sha256=result.model_sha256,
            auc=result.evaluation.get("auc"),
            epsilon=result.epsilon,
            **({"label_dp_epsilon": summary["label_dp"]["epsilon"]} if summary.get("label_dp") else {}),
        )
    )
    status.update(state="completed", run_id=result.run_id, evaluation=result.evaluation)
    return result


def _with_unreported_nodes(
    job: JobSpec, dp: dict[str, Any] | None, decisions: Mapping[str, Any], trained_on: Mapping[str, str]
) -> dict[str, Any] | None:
    """A horizontal record-DP summary lists each node's accountant as its last evaluation reported
    it; a node that took part and dropped before any evaluation reported none, although its ledger
    charged the job at admission. Such nodes are named (`not_reported`) and the job's ε is at least
    what each was charged (an upper bound on what it spent), so the summary never understates it."""
    if not dp or dp.get("unit") != "record" or job.mode is not Mode.HORIZONTAL:
        return dp
    missing = sorted(set(trained_on) - set(dp.get("nodes", {})))
    if not missing:
        return dp
    charged = {
        a: float(decisions[a]["epsilon"]) for a in missing if (decisions.get(a) or {}).get("epsilon") is not None
    }
    # Remote admission happens at the nodes (no decisions here): the job's target ε bounds each one.
    bound = max(charged.values(), default=float(job.dp.epsilon) if job.dp is not None else 0.0)
    return {**dp, "epsilon": max(float(dp["epsilon"]), bound), "not_reported": missing, "charged_not_reported": charged}


def _progress_line(job: JobSpec, ev: dict[str, Any]) -> str:
    rnd = int(ev.get("round", 0))
    bar = "#" * int(20 * rnd / job.rounds)
    extra = f" auc={ev['auc']:.4f}" if "auc" in ev else ""
    return f"[{bar:<20}] round {rnd}/{job.rounds} {ev['event']}{extra}"


# The ServerApp's own event file says when the run ends; the SuperLink is asked for the run's status
# (a Control API call in-process, a few ms) every ENDING_POLL_S from then, and otherwise every
# STATUS_POLL_S in case the ServerApp died silently. tests/unit/test_fed_progress.py asks at once.
STATUS_POLL_S = 5.0
ENDING_POLL_S = 0.5
FIRST_STATUS_S = STATUS_POLL_S
TERMINAL_EVENTS = ("job_failed", "server_error")


# What a run leaves in the job directory: the ServerApp's events and summary, Flower's run log.
RUN_FILES = ("server-events.jsonl", "server-summary.json", "run.log")


def _set_aside_earlier_run(job_dir: Path) -> None:
    """Move an earlier run's RUN_FILES to earlier-runs/<n>/ before a new run starts, so the new run
    reads only its own: read again, the earlier run's `job_failed` would be relayed as this run's
    and hide this run's own failure. The earlier run's events stay in events.jsonl, where it relayed
    them as it ran; the files are kept as it left them."""
    earlier = [job_dir / name for name in RUN_FILES if (job_dir / name).exists()]
    if not earlier:
        return
    n = 1
    while (aside := job_dir / "earlier-runs" / str(n)).exists():
        n += 1
    aside.mkdir(parents=True)
    for path in earlier:
        path.replace(aside / path.name)


def _failure(job_dir: Path, node_ids: Mapping[int, str]) -> tuple[str | None, str]:
    """(reason, agency) of a failed run: the agency the ServerApp named, else the agencies whose
    node dropped out or whose update was rejected in the failing round, else "federation"."""
    events, _ = read_events(job_dir / "server-events.jsonl")
    failed = next((ev for ev in reversed(events) if ev["event"] in ("job_failed", "server_error")), None)
    if failed is None:
        return None, "federation"
    if failed.get("agency"):
        return str(failed.get("reason")), str(failed["agency"])
    rnd = max((int(ev.get("round", 0)) for ev in events), default=0)
    culprits = sorted(
        {
            node_ids.get(int(ev["node_id"]), str(ev["node_id"]))
            for ev in events
            if ev["event"] in ("node_dropped", "update_rejected") and ev.get("node_id") is not None
            and int(ev.get("round", 0)) == rnd
        }
    )  # fmt: skip
    return str(failed.get("reason")), ", ".join(culprits) or "federation"


class Status:
    """status.json in the job directory (read by `xgate train status`)."""

    def __init__(self, job_dir: Path) -> None:
        self.path = job_dir / "status.json"
        self.data: dict[str, Any] = {}

    def update(self, **fields: Any) -> None:
        self.data.update(fields, updated_at=time.time())
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)
