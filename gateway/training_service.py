"""The training service behind POST /v1/training/jobs: decide, charge, run in a worker thread.

Validation (pydantic, errors naming the field), the gateway's Cedar `train` decision on every
registered dataset the job reads, the ε charge on the gateway's PrivacyLedger (all datasets or
none), one job at a time, `federated.runner.run_job` in a daemon worker thread with node-side
PolicyAdmission, and every step and runner event appended to the audit log. The REST edge is
gateway/routes/training.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import Field, ValidationError

from audit.records import Actor, AuditRecord
from federated import dp_sgd, signed_jobs
from federated.admission import Admission, Decision, PolicyAdmission, by_agency
from federated.deployment import NodeSpec
from federated.jobs import JobSpec, Reference
from federated.training_policy import charge, decide_training, job_epsilon, unwrap_engine
from gateway.audit import REQUEST_ID
from gateway.training_audit import actor_of, decision_record, record_for_event, submitted_record
from gateway.training_jobs import TrainingJobStore, summary_of
from policies.budgets import PrivacyLedger
from xgate.errors import BudgetExhausted, InvalidInput, NotFound, PolicyDenied, XgateError
from xgate.errors import JobExists as JobExists  # re-exported: raised here
from xgate.errors import TrainingBusy as TrainingBusy
from xgate.errors import TrainingUnavailable as TrainingUnavailable
from xgate.logging import get_logger
from xgate.principal import Principal

if TYPE_CHECKING:
    from federated.local_link import LocalTraining
    from federated.remote_runner import RemoteTraining

log = get_logger("xgate.gateway.training")
OFFICER_ROLES = ("security_officer", "admin")


def may_see_job(who: Principal, requester: dict[str, Any]) -> bool:
    """A job is its requester's, any security officer's, and its requesting agency's admins' to see
    (status, and in the operators' view its summary, curve and events)."""
    if requester.get("user") == who.user or who.role == "security_officer":
        return True
    return who.role == "admin" and requester.get("agency") == who.agency


TERMINAL = ("completed", "failed", "refused")


class TrainingApprovals(Protocol):
    """The approval registry's training check (policies/approvals.py ApprovalRegistry)."""

    def verify_training(
        self, ref: str, *, agency: str, datasets: Sequence[str], job_id: str, now: datetime
    ) -> None: ...


class TrainingRequest(JobSpec):
    """The REST body: a JobSpec whose legal basis is required (`requester` comes from authentication)."""

    legal_basis: Annotated[Reference, Field(min_length=1)]


def parse_request(body: Any, who: Principal) -> JobSpec:
    """Validate a submission into the JobSpec the nodes approve; InvalidInput names the field."""
    if not isinstance(body, dict):
        raise InvalidInput("body: a JSON object describing the job is required")
    try:
        TrainingRequest.model_validate(body)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "problem": e["msg"]}
            for e in exc.errors(include_input=False)
        ]
        first = problems[0]
        raise InvalidInput(f"{first['field']}: {first['problem']}", problems=problems[:20]) from None
    if body.get("requester") not in (None, "", who.user):
        raise PolicyDenied("requester: a job runs for the authenticated caller only")
    return JobSpec.model_validate({**body, "requester": who.user})


@dataclass(frozen=True)
class TrainingNode:
    agency: str
    store: Path
    ledger: Path
    holdout: Path | None = None
    policy_dir: Path | None = None

    def spec(self) -> NodeSpec:
        return NodeSpec(self.agency, self.store, self.ledger, self.holdout, self.policy_dir)


Runner = Callable[..., Any]


def _default_runner(*args: Any, **kwargs: Any) -> Any:
    from federated.runner import run_job

    return run_job(*args, **kwargs)


class TrainingService:
    """Decides, charges and runs jobs; one at a time, in a worker thread."""

    def __init__(
        self,
        *,
        policy: Any,
        ledger: PrivacyLedger,
        jobs_dir: Path,
        nodes: Sequence[TrainingNode],
        audit_log: Any | None,
        node_policy_dir: Path | None = None,
        ca_dir: Path | None = None,
        runner: Runner = _default_runner,
        node_admission: Callable[[TrainingNode], Admission] | None = None,
        remote: RemoteTraining | None = None,
        local: LocalTraining | None = None,
        approvals: TrainingApprovals | None = None,
        jobs: TrainingJobStore | None = None,
    ) -> None:
        self.policy = policy  # PolicyEngine | PolicyReloader | CheckAuthorizer
        self.ledger = ledger
        self.jobs_dir = jobs_dir
        self.nodes = list(nodes)
        self.audit_log = audit_log
        self.node_policy_dir = node_policy_dir
        self.ca_dir = ca_dir
        self.runner = runner
        self.node_admission = node_admission or self._policy_admission
        self._lock = threading.Lock()
        self._active: str | None = None
        self._thread: threading.Thread | None = None
        self._federation: Any = None
        self._closing = False
        self.approvals = approvals
        self.jobs = jobs  # every replica's jobs (gateway/training_jobs.py): ids unique, records visible everywhere
        self.remote = remote  # agencies' own SuperNodes dial its long-lived SuperLink (no node files here)
        if remote is not None:
            remote.start_in_background()  # up before the first job, so the SuperNodes have joined by then
        self.local = local  # local mode: its long-lived SuperLink and SuperNodes (federated/local_link.py)
        if local is not None:
            local.start_in_background()  # the first job need not wait for Flower's processes either

    # -- submission ----------------------------------------------------------------------------
    def submit(self, who: Principal, body: Any) -> dict[str, Any]:
        if not self.nodes and self.remote is None:
            raise TrainingUnavailable("this gateway has no [training] nodes configured")
        if self.remote is None and any(n.store is None for n in self.nodes):  # remote nodes, local service
            raise TrainingUnavailable("[training] nodes are remote (public_key) but remote training is not wired")
        job = parse_request(body, who)
        actor = actor_of(who.user, who.agency, who.role)
        with self._lock:  # decisions, charges and the job slot are serialised
            self._append(submitted_record(job, actor, REQUEST_ID.get()))
            engine = unwrap_engine(self.policy)
            if self._active is not None or self._closing:
                self._refuse(job, actor, "capacity", "another training job is running", engine.policy_set_hash)
                raise TrainingBusy(
                    "another training job is running (one at a time); submit again when it has finished",
                    retry_after_s=30,
                )
            job_dir = self.jobs_dir / job.job_id
            if job_dir.exists() or (self.jobs is not None and self.jobs.get(job.job_id) is not None):
                self._refuse(job, actor, "capacity", "job id already used", engine.policy_set_hash)
                raise JobExists(f"job id '{job.job_id}' is already used on this gateway")
            registered = engine.principal(who.user)
            if registered is not None and (registered.agency, registered.role, registered.tier) != (
                who.agency,
                who.role,
                who.tier,
            ):
                reason = "authenticated identity does not match the principals registry"
                self._refuse(job, actor, "identity", reason, engine.policy_set_hash)
                raise PolicyDenied(f"training job refused by policy: {reason}")
            # Each checked again by every node (its own registry; every message; its own admission),
            # and all before the gateway charges anything.
            checks = (
                ("signature", signed_jobs.signature_problem(job, registered, engine.require_signed_jobs)),
                ("expired", signed_jobs.expiry_problem(job, datetime.now(UTC))),
                ("dp", dp_sgd.untrainable(job)),
            )
            for stage, problem in checks:
                if problem is not None:
                    self._refuse(job, actor, stage, problem, engine.policy_set_hash)
                    raise PolicyDenied(f"training job refused: {problem}")
            verdict = decide_training(engine, job, user=who.user, agency=who.agency)
            if not verdict.allowed:
                self._append(
                    decision_record(
                        job, actor, allowed=False, stage="policy", reasons=verdict.reasons,
                        policy_ids=verdict.policy_ids, policy_set_hash=verdict.policy_set_hash,
                        datasets=verdict.datasets,
                    )
                )  # fmt: skip
                verdict.raise_if_denied()
            self._verify_approval(job, actor, who, verdict.datasets, verdict.policy_set_hash)
            submission = {
                "job": job.model_dump(mode="json"),
                "job_digest": job.digest(),
                "requester": {"user": who.user, "agency": who.agency, "role": who.role},
                "submitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "decision": {
                    "policy_ids": list(verdict.policy_ids),
                    "policy_set_hash": verdict.policy_set_hash,
                    "datasets": list(verdict.datasets),
                    "epsilon": job_epsilon(job),
                },
            }
            if self.jobs is not None:  # one id, one job, across every replica (JobExists otherwise)
                self.jobs.claim(job.job_id, who.user, submission)
            try:
                charge(self.ledger, engine, job, verdict.datasets)
                self._append(
                    decision_record(
                        job, actor, allowed=True, stage="policy", reasons=verdict.reasons,
                        policy_ids=verdict.policy_ids, policy_set_hash=verdict.policy_set_hash,
                        datasets=verdict.datasets, epsilon=job_epsilon(job),
                    )
                )  # fmt: skip
                job_dir.mkdir(parents=True)
                _write_json(job_dir / "submission.json", submission)
                _write_json(job_dir / "status.json", {"state": "queued", "updated_at": datetime.now(UTC).timestamp()})
                self._active = job.job_id
                self._thread = threading.Thread(
                    target=self._run,
                    args=(job, actor, job_dir, verdict.datasets),
                    name=f"training-{job.job_id}",
                    daemon=True,
                )
                self._thread.start()
            except BudgetExhausted as exc:
                if self.jobs is not None:
                    self.jobs.update(job.job_id, {"job_id": job.job_id, "state": "refused", "reason": exc.message}, [])
                self._append(
                    decision_record(
                        job, actor, allowed=False, stage="budget", reasons=(exc.message,),
                        policy_ids=verdict.policy_ids, policy_set_hash=verdict.policy_set_hash,
                        datasets=verdict.datasets, epsilon=job_epsilon(job),
                    )
                )  # fmt: skip
                raise
            except BaseException as exc:
                self._active = None
                self._abandon(job.job_id, job_dir, exc)
                raise
        log.info("training_job_accepted", job_id=job.job_id, user=who.user, datasets=list(verdict.datasets))
        return {
            "job_id": job.job_id,
            "state": "queued",
            "status_url": f"/v1/training/jobs/{job.job_id}/status",
            "decision": submission["decision"],
        }

    def _abandon(self, job_id: str, job_dir: Path, exc: BaseException) -> None:
        """The job was claimed but could not be started (the ledger, the audit log or the disk
        failed): its records say so, rather than "queued" for ever at every replica."""
        reason = f"the gateway could not start the job ({type(exc).__name__}); submit it again under a new id"
        try:
            if self.jobs is not None:
                self.jobs.update(job_id, {"job_id": job_id, "state": "failed", "reason": reason}, [])
            if (job_dir / "status.json").exists():
                _write_json(job_dir / "status.json", {"state": "failed", "reason": reason})
        except Exception:  # the store itself failing: the log says so, the caller gets the first error
            log.exception("training_job_abandon_failed", job_id=job_id)

    def _verify_approval(
        self, job: JobSpec, actor: Actor, who: Principal, datasets: Sequence[str], policy_set_hash: str
    ) -> None:
        """A named approval_ref must be a registered, signed approval covering this job: never free text."""
        if not job.approval_ref:
            return
        try:
            if self.approvals is None:
                raise PolicyDenied("this gateway has no approval registry: jobs naming an approval_ref are refused")
            self.approvals.verify_training(
                job.approval_ref, agency=who.agency, datasets=datasets, job_id=job.job_id, now=datetime.now(UTC)
            )
        except PolicyDenied as exc:
            self._refuse(job, actor, "approval", exc.message, policy_set_hash)
            raise

    def _refuse(self, job: JobSpec, actor: Actor, stage: str, reason: str, policy_set_hash: str) -> None:
        self._append(
            decision_record(
                job, actor, allowed=False, stage=stage, reasons=(reason,), policy_ids=(),
                policy_set_hash=policy_set_hash, datasets=(),
            )
        )  # fmt: skip

    def _append(self, record: AuditRecord) -> None:
        if self.audit_log is not None:
            self.audit_log.append(record)  # raises AuditUnavailable: unrecorded means not done

    # -- the worker --------------------------------------------------------------------------------
    def _policy_admission(self, node: TrainingNode) -> Admission:
        from policies.decision import DEFAULT_POLICY_DIR, PolicyEngine

        directory = node.policy_dir or self.node_policy_dir or DEFAULT_POLICY_DIR
        return PolicyAdmission(PolicyEngine.load(directory), node.ledger, node.store)

    def _run(self, job: JobSpec, actor: Actor, job_dir: Path, job_datasets: Sequence[str] = ()) -> None:
        decided: dict[str, Decision] = {}
        terminal: list[str] = []
        inner = by_agency({n.agency: self.node_admission(n) for n in self.nodes})

        def admit(spec: JobSpec, agency: str) -> Decision:
            decided[agency] = inner(spec, agency)
            return decided[agency]

        def on_event(event: dict[str, Any]) -> None:
            name = event.get("event")
            if name in ("job_approved", "job_refused") and event.get("agency") in decided:
                event = decided[str(event["agency"])].audit_fields() | event
            if name in ("job_completed", "job_failed"):
                terminal.append(str(name))
            record = record_for_event(event, job, actor)
            if record is not None:
                self._append(record)
            self._mirror(job.job_id, job_dir)

        def created(federation: Any) -> None:
            with self._lock:
                self._federation = federation
                closing = self._closing
            if closing:  # shut down before the federation existed: stop it before anything runs
                raise TrainingUnavailable("the gateway is shutting down")

        extra: dict[str, Any] = {"ca_dir": self.ca_dir} if self.ca_dir is not None else {}
        try:
            if self.remote is not None:  # admission at each node's own site, after the gateway's decision
                nodes: list[Any] = self.remote.participants(job_datasets)
                extra = {"remote": self.remote.mode()}
            elif self.local is not None:  # the long-lived local link carries its own TLS material
                nodes, extra = [n.spec() for n in self.nodes], {"admission": admit, "local": self.local.link()}
            else:
                nodes, extra["admission"] = [n.spec() for n in self.nodes], admit
            self.runner(job, nodes, job_dir=job_dir, on_event=on_event, on_federation=created, **extra)
        except PolicyDenied as exc:  # a node refused: nothing ran
            self._after_failure(job, actor, job_dir, "refused", exc.message, decided)
        except Exception as exc:  # noqa: BLE001  # a job's failure is recorded, never raised into the worker
            reason = exc.message if isinstance(exc, XgateError) else f"{type(exc).__name__}: {exc}"
            log.warning("training_job_failed", job_id=job.job_id, reason=reason[:200])
            if not terminal:
                self._after_failure(job, actor, job_dir, "failed", reason, decided)
        finally:
            self._mirror(job.job_id, job_dir)
            with self._lock:
                self._active = None
                self._federation = None

    def _mirror(self, job_id: str, job_dir: Path) -> None:
        """The job's summary and latest events into the shared record (best effort: a job is never
        failed because the record lags; the next event or the job's end writes it again)."""
        if self.jobs is None:
            return
        from gateway.console.training import job_detail

        try:
            detail = job_detail(job_dir.parent, job_id)
            events = detail.pop("events")
            self.jobs.update(job_id, detail, events)
        except XgateError as exc:
            log.warning("training_job_record_lags", job_id=job_id, error=exc.code)

    def _after_failure(
        self, job: JobSpec, actor: Actor, job_dir: Path, state: str, reason: str, decided: dict[str, Decision]
    ) -> None:
        status = _read_json(job_dir / "status.json")
        if status.get("state") not in TERMINAL:
            _write_json(job_dir / "status.json", {"state": state, "reason": reason[:300],
                                                  "updated_at": datetime.now(UTC).timestamp()})  # fmt: skip
        try:
            if state == "refused":
                refusals = [d for d in decided.values() if not d.approved]
                self._append(
                    decision_record(
                        job, actor, allowed=False, stage="node_admission", reasons=(reason,),
                        policy_ids=tuple(i for d in refusals for i in d.policy_ids),
                        policy_set_hash=next((d.policy_set_hash for d in refusals if d.policy_set_hash), ""),
                        datasets=tuple(sorted({s for d in refusals for s in d.datasets})),
                    )
                )  # fmt: skip
            else:
                record = record_for_event({"event": "job_failed", "reason": reason[:300]}, job, actor)
                if record is not None:
                    self._append(record)
        except XgateError as exc:
            log.error("training_audit_failed", job_id=job.job_id, error=exc.code)

    # -- reading ---------------------------------------------------------------------------------
    def status(self, who: Principal, job_id: str) -> dict[str, Any]:
        from gateway.console.training import JOB_ID, job_summary

        job_dir = self.jobs_dir / job_id
        if not JOB_ID.match(job_id):
            raise NotFound("no such training job")
        if (job_dir / "submission.json").exists():
            submission, summary = _read_json(job_dir / "submission.json"), None
        else:  # accepted by another replica: its shared record
            stored = self.jobs.get(job_id) if self.jobs is not None else None
            if stored is None:
                raise NotFound("no such training job")
            submission, summary = stored["submission"], summary_of(stored)
        if not may_see_job(who, submission.get("requester", {})):
            # The same answer as for a job that does not exist: whether another agency's job id is
            # taken is not for this caller to learn.
            raise NotFound("no such training job")
        summary = summary or job_summary(job_dir)
        return {
            **summary,
            "rounds": submission.get("job", {}).get("rounds"),
            "requester": submission.get("requester", {}).get("user"),
            "submitted_at": submission.get("submitted_at"),
            "gateway_decision": submission.get("decision"),
        }

    @property
    def active(self) -> str | None:
        return self._active

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop a running job's processes (gateway shutdown); the worker records the failure.

        The process supervisor allows a few seconds before it kills the gateway, and Flower's
        processes live in their own sessions (they would outlive it): kill every group at once,
        then let the federation sweep what is left.
        """
        with self._lock:
            self._closing = True
            federation, thread = self._federation, self._thread
        if federation is not None:
            deadline = time.monotonic() + 4.0
            while True:  # also catches a process spawned while the first kill was under way
                kill_groups(federation)
                if thread is None or not thread.is_alive() or time.monotonic() > deadline:
                    break
                thread.join(0.2)
            federation.close()
        if thread is not None:
            thread.join(timeout_s)
        if self.remote is not None:
            self.remote.close()
        if self.local is not None:
            self.local.close()


def kill_groups(federation: Any) -> None:
    for proc in list(getattr(federation, "procs", {}).values()):
        with contextlib.suppress(ProcessLookupError, PermissionError, AttributeError):
            os.killpg(proc.popen.pid, signal.SIGKILL)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
