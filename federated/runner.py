"""Run one job end to end: admission, the Flower App, a `Federation` (federated.deployment), events,
status and outputs. `Federation`, `FlowerSecurity`, `NodeSpec`, `Tls` and `free_port` are re-exported
from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import tomli_w

from crypto.flower_keys import FlowerSecurity, prepare_flower_security
from federated import datasets
from federated.admission import Admission, Decision, LedgerAdmission, store_agency_datasets
from federated.deployment import Federation, NodeSpec, Tls, free_port
from federated.events import JsonlSink, OnEvent, make_event, read_events
from federated.jobs import JobSpec, Mode
from federated.model import encoded_width
from federated.results import write_outputs

if TYPE_CHECKING:
    from federated.remote import RemoteNode
    from federated.remote_runner import RemoteMode
from xgate.errors import ConfigError, NodeUnavailable, PolicyDenied

__all__ = [
    "Federation",
    "FlowerSecurity",
    "JobResult",
    "NodeSpec",
    "Status",
    "Tls",
    "free_port",
    "run_job",
    "write_app",
]


def write_app(
    job: JobSpec,
    job_dir: Path,
    *,
    n_nodes: int,
    max_weight: int,
    ledger_check: bool,
    n_features: int = 0,
    node_ids: Sequence[int] = (),
) -> Path:
    """A Flower App directory (pyproject only: the code is the installed `federated` package).

    `node_ids`: the only nodes the ServerApp may use (a SuperLink shared by several jobs has others).
    """
    app_dir = job_dir / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    if job.mode is Mode.HORIZONTAL:
        client = "federated.horizontal_client:" + ("secagg_app" if job.secagg else "app")
    else:
        client = "federated.vertical_client:app"
    config = {
        **job.run_config(job_dir, ledger_check),
        "nodes": n_nodes,
        "max-weight": max_weight,
        "n-features": n_features,
        "node-ids": ",".join(str(i) for i in sorted(node_ids)),  # a string: node ids are unsigned 64-bit
    }
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


# -- one job, end to end -------------------------------------------------------------------------


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


def run_job(
    job: JobSpec,
    nodes: Sequence[NodeSpec] | Sequence[RemoteNode],
    *,
    job_dir: Path,
    admission: Admission | None = None,
    on_event: OnEvent | None = None,
    security: FlowerSecurity | None = None,
    insecure: bool = False,
    ca_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    on_started: Callable[[Federation], None] | None = None,
    on_federation: Callable[[Federation], None] | None = None,
    remote: RemoteMode | None = None,
) -> JobResult:
    """Admit, run and report one job; raises PolicyDenied (refused) or NodeUnavailable (failed).

    `on_federation` receives the Federation before any process starts (a host that must be able to
    stop the job at any moment, e.g. the gateway at shutdown); `on_started` once nodes registered.

    Flower runs over TLS with SuperNode authentication: `security` if given, else short-lived material
    issued under job_dir/pki by the CA in `ca_dir` (or an ephemeral job CA). insecure=True (plain
    HTTP, logged as `flower_insecure`) is for local debugging only.

    `remote` (federated/remote_runner.py): the agencies run their own SuperNodes on their own hosts
    (`xgate node supernode`); `nodes` are then `RemoteNode`s (agency + registered public key), the
    job runs on `remote.link`'s SuperLink, and admission happens at each node (no `admission` here).
    """
    if remote is not None:
        from federated.remote_runner import run_remote_job

        if admission is not None or security is not None or insecure or ca_dir is not None:
            raise ConfigError("remote nodes decide admission themselves on the link's own TLS material")
        remote_nodes = cast(Sequence["RemoteNode"], nodes)
        return run_remote_job(
            job, remote_nodes, job_dir=job_dir, remote=remote, on_event=on_event, progress=progress,
            on_started=on_started, on_federation=on_federation,
        )  # fmt: skip
    t0 = time.monotonic()
    emit, status = start_job(job, job_dir, on_event)
    say = progress or (lambda _line: None)
    local = cast(Sequence[NodeSpec], nodes)
    participants = [n for n in local if store_agency_datasets(n.store, job)]
    decide = admission or default_admission(local)
    decisions = {}
    for n in participants:
        d = decide(job, n.agency)
        # Policy-based admission adds the policy ids, policy-set hash and datasets it decided on.
        decisions[n.agency] = {"approved": d.approved, "reason": d.reason, "epsilon": d.epsilon, **d.audit_fields()}
        emit(
            make_event(
                job.job_id,
                "job_approved" if d.approved else "job_refused",
                agency=n.agency,
                reason=d.reason,
                epsilon=d.epsilon,
                **d.audit_fields(),
            )
        )
    refused = {a: d["reason"] for a, d in decisions.items() if not d["approved"]}
    if refused or len(participants) < job.min_nodes:
        reason = "; ".join(f"{a}: {r}" for a, r in sorted(refused.items())) or (
            f"{len(participants)} nodes hold job data, job needs {job.min_nodes}"
        )
        status.update(state="refused", reason=reason)
        raise PolicyDenied(f"job '{job.job_id}' refused: {reason}")

    max_weight = job.max_weight or max(len(datasets.pseudonyms(n.store)) for n in participants)
    # Encoded width follows from the catalogue's declared types/ranges (metadata, not data).
    width = 0
    if job.mode is Mode.HORIZONTAL:
        width = sum(encoded_width(i) for i in datasets.element_info(participants[0].store, job.features))
    app_dir = write_app(
        job,
        job_dir,
        n_nodes=len(participants),
        max_weight=max_weight,
        ledger_check=True,
        n_features=width,
    )
    result = JobResult(job.job_id, None, "failed", job_dir)
    if security is None and not insecure:
        security = prepare_flower_security(job_dir / "pki", [n.agency for n in participants], ca_dir=ca_dir)
    with Federation(job_dir, security, insecure=insecure) as fed:
        if on_federation is not None:
            on_federation(fed)
        try:
            say(f"starting SuperLink and {len(participants)} SuperNodes")
            fed.start_superlink()
            for n in participants:
                fed.start_node(n)
            node_ids = fed.wait_registered([n.agency for n in participants])
            fed.write_cli_config()
            if on_started is not None:
                on_started(fed)
            follow_run(fed, job, app_dir, node_ids, result, emit, status, say)
        except Exception as exc:
            emit(make_event(job.job_id, "job_failed", reason=str(exc)[:300]))
            status.update(state="failed", reason=str(exc)[:300])
            raise
    digests = {n.agency: datasets.store_digest(n.store, [*job.features, job.label]) for n in participants}
    return finish(job, result, t0, decisions, digests, emit, status)


def start_job(job: JobSpec, job_dir: Path, on_event: OnEvent | None) -> tuple[OnEvent, Status]:
    """The job's event sink (events.jsonl, then `on_event`) and status file; records `job_submitted`."""
    job_dir.mkdir(parents=True, exist_ok=True)
    sink = JsonlSink(job_dir / "events.jsonl")

    def emit(event: dict[str, Any]) -> None:
        sink(event)
        if on_event is not None:
            on_event(event)

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
    """
    job_dir, offset = result.job_dir, 0
    result.run_id = fed.submit(app_dir)
    emit(make_event(job.job_id, "run_started", run_id=result.run_id, nodes=sorted(node_ids.values())))
    status.update(state="running", run_id=result.run_id)
    deadline = time.monotonic() + job.job_timeout_s
    info: dict[str, Any] = {}
    next_status, terminal, state = 0.0, False, ""
    while True:
        events, offset = read_events(job_dir / "server-events.jsonl", offset)
        terminal = terminal or any(ev["event"] in TERMINAL_EVENTS for ev in events)
        for ev in events:
            if "participants" in ev:
                ev["agencies"] = [node_ids.get(p, str(p)) if isinstance(p, int) else p for p in ev["participants"]]
            if "node_id" in ev and ev["node_id"] is not None:
                ev["agency"] = node_ids.get(int(ev["node_id"]), "unknown")
            emit(ev)
            if ev["event"] in ("round_completed", "round_evaluated"):
                say(_progress_line(job, ev))
        now = time.monotonic()
        ending = terminal or (job_dir / "server-summary.json").exists()
        if now >= next_status:
            info = fed.run_info(result.run_id)
            state = str(info.get("status", ""))
            if state.startswith("finished"):
                break
            next_status = now + (1.0 if ending else STATUS_POLL_S)
        elif ending:
            next_status = min(next_status, now + 1.0)
        if now > deadline:
            fed.stop_run(result.run_id)
            raise NodeUnavailable("federation", f"job timed out after {job.job_timeout_s:.0f} s")
        time.sleep(0.5)
    result.bytes_exchanged = int(info.get("network-traffic", {}).get("total-bytes", 0))
    (job_dir / "run.log").write_text(fed.logs(result.run_id))
    events, offset = read_events(job_dir / "server-events.jsonl", offset)
    for ev in events:
        emit(ev)
    if state != "finished:completed":
        reason = _failure_reason(job_dir) or f"run ended as {state}"
        raise NodeUnavailable("federation", reason)


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
    result.epsilon = (summary.get("dp") or {}).get("epsilon")
    metadata = {
        "job_id": job.job_id,
        "job_digest": job.digest(),
        "job": job.model_dump(mode="json"),
        "run_id": result.run_id,
        "decisions": decisions,
        "model_sha256": result.model_sha256,
        "data_digests": dict(data_digests),
        "dp": summary.get("dp"),
        "evaluation": result.evaluation,
        "bytes_exchanged": result.bytes_exchanged,
        "wall_s": result.wall_s,
        "model_file": "model.npz",
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
        )
    )
    status.update(state="completed", run_id=result.run_id, evaluation=result.evaluation)
    return result


def _progress_line(job: JobSpec, ev: dict[str, Any]) -> str:
    rnd = int(ev.get("round", 0))
    bar = "#" * int(20 * rnd / job.rounds)
    extra = f" auc={ev['auc']:.4f}" if "auc" in ev else ""
    return f"[{bar:<20}] round {rnd}/{job.rounds} {ev['event']}{extra}"


# `flwr ls` is a fresh Python process (1-2 s of CPU): the ServerApp's own event file says when the run
# ends, so the SuperLink is asked only then, or every STATUS_POLL_S in case the ServerApp died silently.
STATUS_POLL_S = 10.0
TERMINAL_EVENTS = ("job_failed", "server_error")


def _failure_reason(job_dir: Path) -> str | None:
    events, _ = read_events(job_dir / "server-events.jsonl")
    for ev in reversed(events):
        if ev["event"] in ("job_failed", "server_error"):
            return str(ev.get("reason"))
    return None


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


def default_admission(nodes: Sequence[NodeSpec]) -> Admission:
    by_agency = {n.agency: LedgerAdmission(n.ledger, n.store) for n in nodes}

    def decide(job: JobSpec, agency: str) -> Decision:
        return by_agency[agency](job, agency)

    return decide
