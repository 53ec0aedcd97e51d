"""Run one job end to end: admission, the Flower App, a `Federation` (federated.deployment), events,
status and outputs (the shared steps are in federated/job_run.py). `Federation`, `FlowerSecurity`,
`JobResult`, `NodeSpec`, `Status`, `Tls`, `free_port` and `write_app` are re-exported from here.
A job on remote SuperNodes is handed to federated/remote_runner.py.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from crypto.flower_keys import FlowerSecurity, prepare_flower_security
from federated import datasets, node_keys
from federated.admission import Admission, Decision, LedgerAdmission, store_agency_datasets
from federated.deployment import Federation, NodeSpec, Tls, free_port
from federated.events import OnEvent, make_event
from federated.job_run import JobResult, Status, finish, follow_run, start_job, write_app
from federated.jobs import JobSpec, Mode
from federated.model import encoded_width, resolve
from federated.node import check_label
from federated.remote import attested_digests

if TYPE_CHECKING:
    from federated.local_link import LocalLink
    from federated.remote import RemoteNode
    from federated.remote_runner import RemoteMode
from xgate.errors import ConfigError, InvalidInput, PolicyDenied

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


# -- one job, end to end -------------------------------------------------------------------------


def check_holdings(job: JobSpec, holdings: Mapping[str, set[str]]) -> None:
    """Refuse, before anything starts, a job its nodes cannot run: a feature no node holds, a
    vertical label holder that is not among the nodes or does not hold the label, a horizontal node
    without one of the features or the label (found only after Flower had started before, each
    failure using up the job id)."""
    agencies = ", ".join(sorted(holdings)) or "none"
    missing = sorted(set(job.features) - set().union(*holdings.values()))
    if missing:
        raise InvalidInput(f"no node of this job holds {missing} (its nodes: {agencies}): check the names")
    if job.mode is Mode.VERTICAL:
        if job.label_holder not in holdings:
            raise InvalidInput(f"label holder '{job.label_holder}' is not among this job's nodes ({agencies})")
        if job.label not in holdings[job.label_holder]:
            raise InvalidInput(f"label holder '{job.label_holder}' holds no '{job.label}'")
        return
    for agency, held in sorted(holdings.items()):  # horizontal: each node trains on all of it
        if lacking := sorted({*job.features, job.label} - held):
            raise InvalidInput(
                f"node '{agency}' holds no {lacking}: every node of a horizontal job holds all its features"
                " and its own labels"
            )


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
    local: LocalLink | None = None,
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

    `local` (federated/local_link.py): the coordinator's long-lived SuperLink and SuperNodes for these
    nodes; the job runs on them instead of starting its own (no per-job `security` then).
    """
    if remote is not None:
        from federated.remote_runner import run_remote_job

        if admission is not None or security is not None or insecure or ca_dir is not None or local is not None:
            raise ConfigError("remote nodes decide admission themselves on the link's own TLS material")
        remote_nodes = cast(Sequence["RemoteNode"], nodes)
        return run_remote_job(
            job, remote_nodes, job_dir=job_dir, remote=remote, on_event=on_event, progress=progress,
            on_started=on_started, on_federation=on_federation,
        )  # fmt: skip
    if local is not None and (security is not None or insecure or ca_dir is not None):
        raise ConfigError("a job on the long-lived local link runs on the link's own TLS material")
    local_nodes = cast(Sequence[NodeSpec], nodes)
    # An invalid job is refused before it is recorded: its encodings fit each node's elements, its
    # label is a flag, and its nodes hold what it names.
    holdings: dict[str, set[str]] = {}
    for n in local_nodes:
        held = holdings[n.agency] = set(datasets.held_elements(n.store))
        resolve(datasets.element_info(n.store, [f for f in job.features if f in held]), job.encodings)
        if job.label in held:
            check_label(datasets.element_info(n.store, [job.label])[0])
    check_holdings(job, holdings)
    t0 = time.monotonic()
    emit, status = start_job(job, job_dir, on_event)
    say = progress or (lambda _line: None)
    participants, decisions = _admit(job, local_nodes, admission or default_admission(local_nodes), emit, status)
    max_weight = job.max_weight or max(len(datasets.pseudonyms(n.store)) for n in participants)
    # Encoded width follows from the catalogue's declared types/ranges (metadata, not data).
    width, infos = 0, []  # vertical: the coordinator sizes nothing
    if job.mode is Mode.HORIZONTAL:
        infos = datasets.element_info(participants[0].store, job.features)
        width = sum(encoded_width(i, e) for i, e in zip(infos, resolve(infos, job.encodings), strict=True))
    make_app = functools.partial(
        write_app, job, job_dir, n_nodes=len(participants), max_weight=max_weight,
        n_features=width, feature_infos=infos,
    )  # fmt: skip
    result = JobResult(job.job_id, None, "failed", job_dir)
    status.update(state="starting", decisions=decisions)  # admitted; Flower processes starting
    extra: dict[str, Any] = {}
    node_ids: dict[int, str] = {}
    try:
        if local is not None:  # the coordinator's long-lived SuperLink and SuperNodes
            if on_federation is not None:
                on_federation(local.fed)
            node_ids = {local.node_ids[n.agency]: n.agency for n in participants}
            app_dir = make_app(node_ids=sorted(node_ids))
            extra["flower"] = local.take_job()
            say(f"on the running SuperLink with {len(participants)} SuperNodes")
            if on_started is not None:
                on_started(local.fed)
            _follow_or_stop(local.fed, job, app_dir, node_ids, result, emit, status, say)
        else:
            app_dir = make_app()
            if security is None and not insecure:
                # A run's own TLS material, replacing an earlier run's of this job id whole: that
                # includes a job CA key a run failing mid-issuance left behind before
                # prepare_flower_security deleted it in all cases (the job id was stuck on it).
                shutil.rmtree(job_dir / "pki", ignore_errors=True)
                security = prepare_flower_security(job_dir / "pki", [n.agency for n in participants], ca_dir=ca_dir)
            with Federation(job_dir, security, insecure=insecure) as fed:
                if on_federation is not None:
                    on_federation(fed)
                say(f"starting SuperLink and {len(participants)} SuperNodes")
                fed.start_superlink()
                for n in participants:
                    fed.start_node(n)
                started = fed.wait_registered([n.agency for n in participants])
                node_ids = dict(started)
                fed.write_cli_config()
                if on_started is not None:
                    on_started(fed)
                follow_run(fed, job, app_dir, started, result, emit, status, say)
            extra["flower"] = {"mode": "per-job"}
    except Exception as exc:
        emit.fail(exc)  # once: a failure the ServerApp reported is already recorded
        status.update(state="failed", reason=str(exc)[:300])
        raise
    return finish(job, result, t0, decisions, _trained_on(job, job_dir, participants, node_ids), emit, status, **extra)


def _trained_on(
    job: JobSpec, job_dir: Path, participants: Sequence[NodeSpec], node_ids: Mapping[int, str]
) -> dict[str, str]:
    """Each node's data digest as it attested it during the run (the ServerApp's summary), not as
    its store reads now: a dataset reloaded after the run started would otherwise be reported as
    what the model was trained on. A node that attested nothing is digested here."""
    summary_file = job_dir / "server-summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    attested = attested_digests(summary, node_ids) if node_ids else {}
    return {
        n.agency: attested.get(n.agency) or node_keys.data_digest(n.store, n.ledger, job.elements())
        for n in participants
    }


def _admit(
    job: JobSpec, nodes: Sequence[NodeSpec], decide: Admission, emit: OnEvent, status: Status
) -> tuple[list[NodeSpec], dict[str, Any]]:
    """The nodes holding job data, each asked to admit the job; PolicyDenied when any refuses."""
    participants = [n for n in nodes if store_agency_datasets(n.store, job)]
    decisions = {}
    for n in participants:
        d = decide(job, n.agency)
        # The label holder of a label-DP job releases noisy labels at that ε (charged to its label's
        # dataset once per label and ε, federated/admission.py): shown beside the job's record-DP ε.
        label = {"label_dp_epsilon": job.label_dp} if job.label_dp is not None and n.agency == job.label_holder else {}
        # Policy-based admission adds the policy ids, policy-set hash and datasets it decided on.
        decisions[n.agency] = {
            "approved": d.approved, "reason": d.reason, "epsilon": d.epsilon, **label, **d.audit_fields()
        }  # fmt: skip
        emit(
            make_event(
                job.job_id,
                "job_approved" if d.approved else "job_refused",
                agency=n.agency,
                reason=d.reason,
                epsilon=d.epsilon,
                **(label if d.approved else {}),
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
    return participants, decisions


def _follow_or_stop(
    fed: Federation,
    job: JobSpec,
    app_dir: Path,
    node_ids: dict[int, str],
    result: JobResult,
    emit: OnEvent,
    status: Status,
    say: Callable[[str], None],
) -> None:
    """`follow_run` on a SuperLink that outlives the job: a run still going when following fails
    is stopped, so it cannot hold the link's SuperNodes into the next job."""
    try:
        follow_run(fed, job, app_dir, node_ids, result, emit, status, say)
    except BaseException:
        if result.run_id is not None:
            fed.stop_run(result.run_id)
        raise


def default_admission(nodes: Sequence[NodeSpec]) -> Admission:
    by_agency = {n.agency: LedgerAdmission(n.ledger, n.store) for n in nodes}

    def decide(job: JobSpec, agency: str) -> Decision:
        return by_agency[agency](job, agency)

    return decide
