"""`xgate train ...`: submit a federated training job, follow its status and logs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import sqlite3
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from pydantic import BaseModel, ConfigDict, ValidationError

from crypto.pki import CA_KEY
from federated.events import JsonlSink, drop_partial_line, make_event, read_events
from federated.jobs import PURPOSE_PATTERN, AgencyName, load_job, parse_job
from xgate.errors import InvalidInput, XgateError

if TYPE_CHECKING:  # imported where used: the runner pulls in Flower and matplotlib (~2 s per `xgate` call)
    from federated.admission import Admission
    from federated.runner import NodeSpec

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, help="Federated training jobs")

DEFAULT_ROOT = Path("var/federated")


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agency: AgencyName  # checked here, by file and entry: it names the node's Flower certificate
    store: Path
    ledger: Path
    holdout: Path | None = None
    # The node's own policy set: admission by Cedar `train` + PrivacyLedger (PolicyAdmission) instead
    # of the purposes/caps configured in its ledger file (LedgerAdmission).
    policy_dir: Path | None = None


class _Nodes(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nodes: list[_Node]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _parse_nodes(path: Path) -> list[_Node]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is not TOML: dropped
    except FileNotFoundError:
        _fail(f"nodes file '{path}' not found")
    except IsADirectoryError:
        _fail(f"nodes file '{path}' is a directory")
    except UnicodeDecodeError:
        _fail(f"nodes file '{path}' is not UTF-8 text")
    except OSError as exc:
        _fail(f"nodes file '{path}' cannot be read: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        _fail(f"nodes file '{path}' is not valid TOML: {exc}")
    try:
        nodes = _Nodes.model_validate(data).nodes
    except ValidationError as exc:
        problems = "; ".join(_node_problem(data, e["loc"], e["msg"]) for e in exc.errors())
        _fail(f"nodes file '{path}' is invalid: {problems}")
    if clashes := _node_clashes(nodes):
        _fail(f"nodes file '{path}' is invalid: {'; '.join(clashes)}")
    return nodes


def _node_clashes(nodes: list[_Node]) -> list[str]:
    """Entries naming one node twice, each named once, with the first entry it clashes with.

    Accepted, they fail only mid-run: an agency's two SuperNodes both answer for it (`this node
    already answered ...`); one store served twice counts its subjects twice; and a node keeps its
    keys and run state (fl-cache) beside its ledger, so two ledgers in one directory share them.
    Paths are compared resolved (`a/./s.sqlite` is `a/s.sqlite`)."""
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    problems = []
    for i, n in enumerate(nodes):
        ledger = os.path.realpath(n.ledger)
        keys = [
            ("agency", n.agency, "agency"),
            ("file", os.path.realpath(n.store), "store"),
            ("file", ledger, "ledger"),
            ("ledger directory", os.path.dirname(ledger), "ledger"),
        ]
        for kind, value, what in keys:
            j, other = seen.setdefault((kind, value), (i, what))
            if (j, other) == (i, what):
                continue
            who, first = f"nodes[{i}] (agency '{n.agency}')", f"nodes[{j}] (agency '{nodes[j].agency}')"
            if kind == "agency":
                problems.append(
                    f"nodes[{i}]: agency '{value}' is listed twice (also nodes[{j}]): each agency runs one node"
                )
            elif kind == "file":
                problems.append(f"{who}: {what} '{value}' is also the {other} of {first}")
            else:
                problems.append(
                    f"{who}: ledger '{ledger}' is in the directory of the ledger of {first}, '{value}': a node keeps"
                    " its keys and run state beside its ledger, so each node's ledger needs a directory of its own"
                )
            break  # one clash per entry: an entry copied whole would otherwise be reported three times
    return problems


def _node_problem(data: dict[str, Any], loc: tuple[int | str, ...], msg: str) -> str:
    """One validation problem as `nodes[1].store (agency 'tax'): <problem>`."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "nodes file"
    agency, entries = "", data.get("nodes")
    if len(loc) > 1 and isinstance(loc[1], int) and isinstance(entries, list) and loc[1] < len(entries):
        entry = entries[loc[1]]
        if isinstance(entry, dict) and isinstance(entry.get("agency"), str):
            agency = f" (agency '{entry['agency']}')"
    return f"{where}{agency}: {msg}"


def _node_path_problems(nodes: list[_Node]) -> list[str]:
    """Every node's files, checked before anything starts: a missing holdout or store otherwise
    fails seconds later inside a Flower process, far from the nodes file that named it."""
    problems = []
    for n in nodes:
        who = f"node '{n.agency}'"
        if (p := _sqlite_problem(n.store, "elements")) is not None:
            problems.append(f"{who}: store '{n.store.absolute()}' {p}")
        if n.ledger.is_dir() or (n.ledger.exists() and _sqlite_problem(n.ledger, None) is not None):
            problems.append(f"{who}: ledger '{n.ledger.absolute()}' is not an admission ledger (SQLite file)")
        if n.holdout is not None:
            try:
                n.holdout.read_text(encoding="utf-8")  # what the node's ClientApp reads (federated/node.py)
            except FileNotFoundError:
                problems.append(f"{who}: holdout '{n.holdout.absolute()}' does not exist")
            except UnicodeDecodeError:
                problems.append(f"{who}: holdout '{n.holdout.absolute()}' is not UTF-8 text")
            except OSError as exc:
                problems.append(f"{who}: holdout '{n.holdout.absolute()}' cannot be read: {exc.strerror or exc}")
        if n.policy_dir is not None and not n.policy_dir.is_dir():
            problems.append(f"{who}: policy_dir '{n.policy_dir.absolute()}' is not a directory")
    return problems


def _sqlite_problem(path: Path, table: str | None) -> str | None:
    """Why `path` is not a readable SQLite file (holding `table`), or None."""
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a directory, not a SQLite file"
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        return f"is not a SQLite file ({exc})"
    if table is not None and table not in tables:
        return "is not a node store (load data with `xgate node load`)"
    return None


def _admission(nodes: list[_Node]) -> Admission | None:
    """Per node: PolicyAdmission under its policy_dir, else LedgerAdmission; None if no node has one."""
    if not any(n.policy_dir for n in nodes):
        return None
    from federated.admission import LedgerAdmission, PolicyAdmission, by_agency
    from policies.decision import PolicyEngine

    return by_agency(
        {
            n.agency: PolicyAdmission(PolicyEngine.load(n.policy_dir), n.ledger, n.store)
            if n.policy_dir
            else LedgerAdmission(n.ledger, n.store)
            for n in nodes
        }
    )


@app.command()
def submit(
    job: Path = typer.Option(..., "--job", help="job TOML file"),
    nodes: Path | None = typer.Option(
        None, "--nodes", help=r"local run: TOML listing \[\[nodes]] agency/store/ledger (+ holdout)"
    ),
    root: Path = typer.Option(DEFAULT_ROOT, "--root", help="directory holding job directories"),
    ca: Path | None = typer.Option(
        None, "--ca", help="federation CA directory (xgate pki init) issuing the job's Flower TLS material"
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="DEBUG ONLY: run Flower over plain HTTP without SuperNode authentication"
    ),
    gateway: list[str] | None = typer.Option(
        None,
        "--gateway",
        help="submit through the gateway's REST API (POST /v1/training/jobs) instead;"
        " repeat for replicas (the next is tried when one cannot be reached)",
    ),
    api_key: str | None = typer.Option(None, "--api-key", envvar="XGATE_API_KEY", help="with --gateway"),
    gateway_ca: Path | None = typer.Option(None, "--gateway-ca", help="CA certificate verifying the gateway"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="with --gateway: follow the job until it ends"),
) -> None:
    """Admit the job at every data-owning node, run it on a local Flower deployment, report.

    Flower always runs over TLS with SuperNode authentication; its short-lived certificates and keys
    are issued under the job directory by --ca, or by an ephemeral job CA when --ca is not given.
    """
    if gateway:
        _submit_through_gateway(job, gateway, api_key, gateway_ca, wait, local=(nodes, ca, insecure))
        return
    if nodes is None:
        _fail("--nodes is required for a local run (or submit with --gateway URL)")
        return
    if insecure and ca is not None:
        _fail("--insecure and --ca exclude each other")
    if insecure:
        typer.echo(
            "WARNING: --insecure: Flower traffic (model updates, run control) travels unencrypted and any "
            "process can join as a SuperNode. Never use it outside a local debugging session.",
            err=True,
        )
    if ca is not None and not (ca / CA_KEY).exists():
        _fail(f"no CA in '{ca}' (create one with `xgate pki init`)")
    try:
        from federated.runner import NodeSpec

        spec = load_job(job)
        parsed = _parse_nodes(nodes)
        specs = [NodeSpec(n.agency, n.store, n.ledger, n.holdout, n.policy_dir) for n in parsed]
        job_dir = root.resolve() / spec.job_id  # Flower's processes run elsewhere: absolute paths only

        def preflight() -> None:
            if problems := _node_path_problems(parsed):
                _fail(f"nodes file '{nodes}': {'; '.join(problems)}")

        with _runner_lock(job_dir, spec.job_id, root, preflight):
            result = _run_with_progress(
                spec, specs, job_dir, ca_dir=ca, insecure=insecure, admission=_admission(parsed)
            )
    except XgateError as exc:
        _fail(exc.message)
    except typer.Exit:  # click's Exit is a RuntimeError: let _fail's exits through untouched
        raise
    except (RuntimeError, TimeoutError) as exc:  # the Flower deployment failed (details in the job's logs/)
        _fail(f"federation failed: {str(exc)[:300]}")
    except (OSError, sqlite3.Error) as exc:  # a node's file that changed under the run, a full disk
        _fail(f"job failed: {str(exc)[:300]}")
    ev = result.evaluation
    typer.echo(
        f"job {result.job_id} completed: AUC {_auc_text(ev.get('auc'), ev.get('estimated_from_noisy_labels'))},"
        f" balanced accuracy {ev.get('balanced_accuracy', float('nan')):.4f}"
        + (f", epsilon {result.epsilon:.3g}" if result.epsilon is not None else "")
    )
    if note := _one_sided_note(ev):
        typer.echo(note)
    typer.echo(f"outputs in {result.job_dir} (model.npz, model.json, report.json, curve.png, events.jsonl)")


# A local job's runner (`train submit`) holds an flock on <job>/runner.lock (holding its pid and start
# time) for as long as it runs. The kernel drops the lock when the process dies, even by SIGKILL, so a
# job left in an active state whose lock is free lost its runner: `status`, `logs` and `submit` then
# record it failed. Jobs run by the gateway have no such file and are left alone.
RUNNER_LOCK = "runner.lock"
ACTIVE_STATES = ("admission", "starting", "running")
RUNNER_ENDED = "runner process ended without finishing"


@contextlib.contextmanager
def _runner_lock(job_dir: Path, job_id: str, root: Path, preflight: Callable[[], None]) -> Iterator[None]:
    """Hold the job's runner lock around a local run, once the job id may run again (`_check_resubmission`)
    and `preflight` passed. A job refused before it was recorded leaves nothing behind."""
    created = [d for d in (job_dir, *job_dir.parents) if not d.exists()]  # deepest first
    had_lock = (job_dir / RUNNER_LOCK).exists()
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"--root '{root}': cannot create the job directory {job_dir} ({exc.strerror or exc})")
    fd = None
    for _ in range(20):  # `train status` holds the lock for a moment while it looks
        fd = _claim_runner_lock(job_dir, create=True)
        if fd is not None:
            break
        time.sleep(0.05)
    if fd is None:
        _fail(f"job '{job_id}' is being run by another process{_runner_pid_text(job_dir)}; choose another job id")
    running = False
    try:
        if had_lock:
            _record_runner_ended(job_dir)  # under the lock: its earlier runner is gone
        _check_resubmission(job_dir, job_id, root)
        preflight()
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started_at": datetime.now(UTC).isoformat()}).encode())
        running = True
        yield
    finally:
        if not (job_dir / "status.json").exists() or (not running and not had_lock):
            with contextlib.suppress(OSError):  # before closing: a waiting claimant sees the file gone
                (job_dir / RUNNER_LOCK).unlink()
            with contextlib.suppress(OSError):
                for d in created:
                    d.rmdir()
        os.close(fd)


def _claim_runner_lock(job_dir: Path, *, create: bool) -> int | None:
    """The job's runner lock, held (a descriptor), or None: another process holds it, or (without
    `create`) no runner ever took it."""
    path = job_dir / RUNNER_LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        except OSError:
            if create:
                raise
            return None  # absent, or not ours to lock (a read-only look at someone's jobs)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except (BlockingIOError, FileNotFoundError) as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError) or not create:
                return None
            continue
        if same:
            return fd
        os.close(fd)  # the file was replaced while we waited for it: take the current one
        if not create:
            return None


def _runner_pid_text(job_dir: Path) -> str:
    try:
        pid = json.loads((job_dir / RUNNER_LOCK).read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" (runner pid {pid})" if isinstance(pid, int) else ""


def _settle_runner(job_dir: Path) -> None:
    """Record a job failed whose runner ended without finishing it (see RUNNER_LOCK)."""
    fd = _claim_runner_lock(job_dir, create=False)
    if fd is None:
        return
    try:
        _record_runner_ended(job_dir)
    except OSError:
        pass  # a job directory we may read but not write: shown as recorded
    finally:
        os.close(fd)


def _record_runner_ended(job_dir: Path) -> None:
    """Under the runner lock: a job still in an active state lost its runner; mark it failed."""
    path = job_dir / "status.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # missing or corrupt: its reader reports that
    if not isinstance(data, dict) or data.get("state") not in ACTIVE_STATES:
        return
    events = job_dir / "events.jsonl"
    drop_partial_line(events)  # a line the killed runner left half-written
    JsonlSink(events)(make_event(job_dir.name, "job_failed", reason=RUNNER_ENDED))  # before the state: never lost
    data.update(state="failed", reason=RUNNER_ENDED, updated_at=time.time())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def _read_status(job_dir: Path) -> dict[str, Any]:
    """The job's status.json; InvalidInput naming the job when it cannot be read."""
    try:
        data = json.loads((job_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"job '{job_dir.name}': status.json is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"job '{job_dir.name}': status.json is not a JSON object")
    return data


def _check_resubmission(job_dir: Path, job_id: str, root: Path) -> None:
    """A job id that was refused or failed may be submitted again (each node decides it again if the
    job or its policy changed); one that is running or completed may not."""
    if not (job_dir / "status.json").exists():
        return
    try:
        state = _read_status(job_dir).get("state")
    except XgateError as exc:
        _fail(f"{exc.message}; choose another job id")
    if state not in ("refused", "failed"):
        _fail(f"job '{job_id}' already exists in {root} (state {state}); choose another job id")


def _submit_through_gateway(
    job: Path, gateway: list[str], api_key: str | None, ca_cert: Path | None, wait: bool, local: tuple[Any, ...]
) -> None:
    from client.train_remote import submit_remote

    if any(local):
        _fail("--gateway runs the job on the gateway's own nodes: drop --nodes, --ca and --insecure")
    if not api_key:
        _fail("--gateway needs --api-key (or XGATE_API_KEY)")
    try:
        final = submit_remote(job, gateway, str(api_key), ca_cert=ca_cert, wait=wait, say=typer.echo)
    except XgateError as exc:
        _fail(exc.message)
    if wait:
        ev = final.get("evaluation") or {}
        auc = _auc_text(ev.get("auc"), ev.get("estimated_from_noisy_labels"))
        typer.echo(f"job {final.get('job_id')} completed: AUC {auc}")
        if note := _one_sided_note(ev):
            typer.echo(note)


def _auc_text(auc: object, estimated: object = False) -> str:
    """The AUC as reported; the REST answer carries null when it is undefined (NaN at the gateway).
    Under label DP it is counted against the noisy held-out labels: an estimate, and said so."""
    if isinstance(auc, int | float) and auc == auc:  # not NaN
        return f"{auc:.4f}" + (" (estimated from the label-DP held-out labels)" if estimated else "")
    return "n/a (the held-out rows hold one class only)"


def _spent_text(decisions: object) -> str:
    """The privacy budget each admitting node charged the job, as its decision recorded it (record or
    node DP, label DP): what an analyst tracks against the nodes' caps. Empty when none was."""
    if not isinstance(decisions, dict):
        return ""
    spent = []
    for agency, d in sorted(decisions.items()):
        if not isinstance(d, dict) or not d.get("approved"):
            continue
        for key, kind in (("epsilon", ""), ("label_dp_epsilon", " label DP")):
            value = d.get(key)
            if isinstance(value, int | float) and value > 0:
                spent.append(f"{agency} {value:g}{kind}")
    return f" epsilon: {', '.join(spent)}" if spent else ""


def _one_sided_note(evaluation: dict[str, Any]) -> str | None:
    """Why a balanced accuracy of 0.5 can sit beside a useful AUC: every held-out row was scored on
    one side of the threshold (the training prevalence). Seen on a short horizontal job, whose
    scores had not yet moved down from 0.5 to the prevalence; the AUC ranks whatever the threshold."""
    counts = evaluation.get("confusion_matrix")
    if not isinstance(counts, dict) or not all(isinstance(counts.get(k), int) for k in ("tp", "fp", "tn", "fn")):
        return None
    flagged, passed = counts["tp"] + counts["fp"], counts["tn"] + counts["fn"]
    if (flagged and passed) or not flagged + passed:
        return None
    side = "positive" if flagged else "negative"
    threshold = evaluation.get("threshold")
    at = f" ({threshold:.3g})" if isinstance(threshold, int | float) else ""
    return (
        f"note: every held-out row was scored {side} at the threshold, the training prevalence{at}: the"
        " model's scores are not calibrated yet (more rounds, local_epochs or a larger learning_rate);"
        " its AUC ranks regardless of the threshold"
    )


def _run_with_progress(spec: Any, specs: list[NodeSpec], job_dir: Path, **transport: Any) -> Any:
    from federated.runner import run_job

    if not sys.stdout.isatty():
        return run_job(spec, specs, job_dir=job_dir, progress=lambda line: typer.echo(line), **transport)
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task(f"training {spec.job_id}", total=spec.rounds)

        def on_event(ev: dict[str, Any]) -> None:
            if ev["event"] == "round_completed":
                bar.update(task, completed=int(ev["round"]))
            elif ev["event"] in ("job_refused", "node_dropped", "update_rejected", "job_failed"):
                bar.console.print(f"{ev['event']}: {ev.get('agency', '')} {ev.get('reason', '')}")

        return run_job(spec, specs, job_dir=job_dir, on_event=on_event, **transport)


@app.command()
def keygen(
    user: str = typer.Option(..., "--user", help="the analyst's registered user id (principals.toml)"),
    out: Path = typer.Option(..., "--out", help="where to write the private key (PEM, mode 0600)"),
) -> None:
    """Make an analyst's job-signing key; prints the `signing_key` line for its principals.toml entry."""
    import base64

    from crypto.envelope import SigningKey

    if out.exists():
        _fail(f"{out} exists: a signing key is never overwritten")
    key = SigningKey.generate(user, "job-signing")
    key.save(out)
    typer.echo(f'# principals.toml, in the [[users]] entry with id = "{user}":')
    typer.echo(f'signing_key = "{base64.b64encode(key.public_raw).decode()}"')


@app.command()
def sign(
    job: Path = typer.Option(..., "--job", help="job TOML file"),
    key: Path = typer.Option(..., "--key", help="the analyst's signing key (xgate train keygen)"),
    requester: str = typer.Option(..., "--requester", help="the analyst's registered user id: the job runs for it"),
    out: Path = typer.Option(..., "--out", help="the signed job TOML to submit"),
    valid_until: str = typer.Option(
        "", "--valid-until", help="ISO 8601 time with offset (e.g. 2026-12-13T00:00:00Z): refused after it"
    ),
) -> None:
    """Sign a job in the analyst's name: nodes and the gateway refuse any other definition run for it."""
    import tomli_w

    from crypto.envelope import SigningKey
    from federated import signed_jobs
    from federated.signed_jobs import sign_job

    if not requester:
        _fail("--requester: the analyst's registered user id is required (the job runs for it)")
    try:
        body = {**load_job(job).model_dump(mode="json"), "requester": requester}
        spec = parse_job({**body, "valid_until": valid_until} if valid_until else body)
        if signed_jobs.expiry_problem(spec, datetime.now(UTC)) is not None:
            _fail(f"the job's valid_until {spec.valid_until} is already past: nodes would refuse it")
        signed = sign_job(spec, SigningKey.load(key))
    except XgateError as exc:
        _fail(exc.message)
    if out.is_dir():
        _fail(f"--out '{out}' is a directory: name the signed job file to write")
    if not out.parent.is_dir():
        _fail(f"--out '{out}': directory '{out.parent}' does not exist")
    tmp = out.with_name(out.name + ".tmp")
    try:  # whole or not at all: a half-written signed job would be refused at every node
        tmp.write_text(tomli_w.dumps(signed.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        _fail(f"--out '{out}': cannot write the signed job ({exc.strerror or exc})")
    typer.echo(f"signed job {signed.job_id} for {requester} -> {out}")


def _job_id_shape(job_id: str) -> None:
    """A job id names a directory under --root: `../..` read another directory's files."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]{2,63}", job_id):
        _fail(f"'{job_id[:64]}' is not a job id (3-64 of a-z, 0-9, _ and -)")


@app.command()
def status(
    job_id: str = typer.Argument(None, help="job id (all jobs when omitted)"),
    root: Path = typer.Option(DEFAULT_ROOT, "--root"),
) -> None:
    """State of one job (or all jobs) from its status.json; a job whose runner died is marked failed."""
    if job_id:
        _job_id_shape(job_id)
    dirs = [root / job_id] if job_id else sorted(p for p in root.glob("*") if (p / "status.json").exists())
    if job_id and not (root / job_id / "status.json").exists():
        _fail(f"no job '{job_id}' in {root}")
    if not dirs:  # before the first job, the default root does not exist yet: nothing is wrong
        typer.echo(f"no jobs in {root}" + ("" if root.is_dir() else " (no such directory yet)"))
    unreadable = 0
    for d in dirs:
        _settle_runner(d)
        try:
            data = _read_status(d)
        except XgateError as exc:  # one damaged job directory must not hide the others
            typer.echo(f"error: {exc.message}", err=True)
            unreadable += 1
            continue
        evaluation = data.get("evaluation")
        auc = evaluation.get("auc") if isinstance(evaluation, dict) else None
        line = f"{d.name}: {data.get('state')}"
        if isinstance(auc, int | float):
            line += f" auc={auc:.4f}"
        line += _spent_text(data.get("decisions"))
        if data.get("state") in ACTIVE_STATES:
            line += _runner_pid_text(d)
        if data.get("reason"):
            line += f" ({data['reason']})"
        typer.echo(line)
    if unreadable:
        raise typer.Exit(1)


@app.command()
def logs(
    job_id: str = typer.Argument(..., help="job id"),
    root: Path = typer.Option(DEFAULT_ROOT, "--root"),
    events: bool = typer.Option(False, "--events", help="print the audit events as JSON lines instead"),
    flower: bool = typer.Option(False, "--flower", help="print Flower's own run log (once the run ended)"),
) -> None:
    """The job's progress so far (each node's admission, rounds, outcome), its audit events, or
    Flower's run log."""
    _job_id_shape(job_id)
    d = root / job_id
    if not d.exists():
        _fail(f"no job '{job_id}' in {root}")
    _settle_runner(d)
    try:
        recorded = read_events(d / "events.jsonl")[0]
    except XgateError as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(f"job '{job_id}': events.jsonl cannot be read ({exc.strerror or exc})")
    if events:
        for ev in recorded:
            typer.echo(json.dumps(ev, sort_keys=True))
        return
    if flower:
        log = d / "run.log"
        if not log.exists():
            _fail(f"job '{job_id}' has no Flower run log yet (see `xgate train logs {job_id}`)")
        typer.echo(log.read_text(errors="replace"))
        return
    for line in progress_lines(recorded):
        typer.echo(line)


def progress_lines(recorded: list[dict[str, Any]]) -> list[str]:
    """One readable line per event that tells the job's progress (no values, no ids of people).

    A job id that was refused or failed may be submitted again: its later submissions read
    `resubmitted`, so an earlier run's outcome above one is not read as the new run's."""
    out, submissions = [], 0
    for ev in recorded:
        when = str(ev.get("ts", ""))[11:19]
        try:
            text = _progress_text(ev)
        except (TypeError, ValueError, KeyError):  # a damaged event: say so, show the rest
            text = f"(unreadable {str(ev.get('event'))[:40]} event)"
        if ev.get("event") == "job_submitted":
            submissions += 1
            text = f"re{text}" if submissions > 1 and text else text
        if text is not None:
            out.append(f"{when} {text}")
    return out


def _progress_text(ev: dict[str, Any]) -> str | None:
    name, who = ev.get("event"), ev.get("agency", "")
    if name == "job_submitted":
        text = f"submitted ({ev.get('mode')}, purpose {ev.get('purpose')})"
    elif name in ("job_approved", "job_refused"):
        again = f", decided again: {ev['redecided']}" if ev.get("redecided") else ""
        verdict = "approved" if name == "job_approved" else f"refused: {ev.get('reason')}"
        labels = f", label DP epsilon {ev['label_dp_epsilon']:g}" if ev.get("label_dp_epsilon") is not None else ""
        text = f"admission at {who}: {verdict} (epsilon {ev.get('epsilon', 0):g}{labels}{again})"
    elif name == "run_started":
        text = f"run {ev.get('run_id')} started on {', '.join(ev.get('nodes', []))}"
    elif name == "aligned":
        text = f"aligned {ev.get('subjects')} subjects across {', '.join(ev.get('nodes', []))}"
    elif name == "round_completed":
        text = f"round {ev.get('round')} completed ({', '.join(ev.get('agencies', []))})"
    elif name == "round_evaluated":
        text = f"round {ev.get('round')} evaluated: AUC {float(ev.get('auc', float('nan'))):.4f}"
    elif name in ("node_dropped", "update_rejected"):
        text = f"round {ev.get('round')}: {name.replace('_', ' ')} at {who} {ev.get('reason', '')}".rstrip()
    elif name == "secagg_round":
        done = "unmasked" if ev.get("unmasked") else "NOT unmasked"
        # The statistics round (a job that standardises) comes before training round 1: named as such.
        which = "statistics round" if ev.get("phase") == "statistics" else f"round {ev.get('round')}"
        text = (
            f"{which}: secure aggregation {done}: {ev.get('masked_vectors')} masked updates, "
            f"{ev.get('shares')} shares per secret, threshold {ev.get('threshold')}"
        )
    elif name == "dp_spent":
        text = f"differential privacy: epsilon {float(ev.get('epsilon', 0)):.4g} (delta {ev.get('delta')})"
    elif name == "job_completed":
        text = f"completed: AUC {float(ev.get('auc') or float('nan')):.4f}, model {str(ev.get('model_sha256'))[:16]}"
        if ev.get("epsilon") is not None:
            text += f", epsilon {float(ev['epsilon']):.4g}"
        if ev.get("label_dp_epsilon") is not None:
            text += f", label DP epsilon {float(ev['label_dp_epsilon']):g}"
    elif name == "job_failed":
        text = f"failed{' at ' + who if who else ''}: {ev.get('reason')}"
    else:
        return None
    return text


@app.command()
def allow(
    ledger: Path = typer.Option(..., "--ledger", help="the node's admission ledger (created if absent)"),
    store: Path = typer.Option(..., "--store", help="the node's store (its datasets get --default-cap)"),
    purpose: list[str] = typer.Option(..., "--purpose", help="a purpose this node admits (repeatable)"),
    cap: list[str] = typer.Option(
        [], "--cap", help="DATASET=EPSILON: privacy budget of one dataset over all jobs (repeatable)"
    ),
    default_cap: float | None = typer.Option(
        None, "--default-cap", min=0.0, help="budget for every dataset in the store without its own --cap"
    ),
    dp_only: bool = typer.Option(False, "--dp-only", help="refuse jobs without differential privacy"),
    trust_key: list[str] = typer.Option(
        [],
        "--trust-key",
        help="USER=BASE64: an analyst's signing key (xgate train keygen); jobs in USER's name must carry its"
        " signature (repeatable; replaces the trusted keys; without it they are kept)",
    ),
    clear_trusted_keys: bool = typer.Option(
        False, "--clear-trusted-keys", help="trust no analyst key: every signed job is refused from then on"
    ),
    require_signed: bool | None = typer.Option(
        None,
        "--require-signed/--no-require-signed",
        help="refuse every job not signed by a trusted analyst (unset: keep the current setting)",
    ),
) -> None:
    """Configure a node's admission for local runs (LedgerAdmission): purposes, ε caps, trusted analysts.

    Replaces the node's previous purposes and caps (an administrator's action); spends stay. A job id
    decided under the earlier settings is decided again when resubmitted. A node listed with
    `policy_dir` in the nodes file is admitted by its Cedar policy set instead.
    """
    from federated.admission import LedgerAdmission

    if bad := [p for p in purpose if not re.fullmatch(PURPOSE_PATTERN, p)]:
        _fail(
            f"--purpose '{bad[0]}' can match no job: a purpose is 3-64 characters of a-z, 0-9, _ and -,"
            " starting with a letter (as in the job file)"
        )
    if default_cap is not None and not math.isfinite(default_cap):
        _fail(f"--default-cap {default_cap} must be a finite number >= 0")
    if ledger.is_dir():
        _fail(f"--ledger '{ledger}' is a directory, not an admission ledger file")
    above = next((p for p in ledger.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():  # its mkdir would report "File exists"
        _fail(f"--ledger '{ledger}': '{above}' is a file, not a directory")
    if os.path.realpath(ledger) == os.path.realpath(store):  # its tables would be written into the store
        _fail(f"--ledger and --store name the same file ('{store}'): the admission ledger is a file of its own")
    purpose = list(dict.fromkeys(purpose))  # a purpose given twice allows the same jobs as once
    try:
        caps = _parse_caps(cap)
        held = _store_datasets(store)
        unknown = sorted(set(caps) - set(held))
        if unknown:
            _fail(f"--cap names dataset(s) not in {store}: {', '.join(unknown)} (it holds {', '.join(held) or 'none'})")
        if default_cap is not None:
            caps = {**{ds: default_cap for ds in held}, **caps}
        if clear_trusted_keys and trust_key:
            _fail("--clear-trusted-keys and --trust-key contradict each other: give one")
        keys = {} if clear_trusted_keys else (_parse_trusted_keys(trust_key) if trust_key else None)
        admission = LedgerAdmission(ledger, store)
        admission.configure(
            purpose, caps, allow_non_dp=not dp_only, signing_keys=keys, require_signed_jobs=require_signed
        )
        trusted, checks, required = admission.signature_settings()
    except XgateError as exc:
        _fail(exc.message)
    except sqlite3.Error as exc:  # admission.py's own sqlite errors, named here at the edge
        _fail(f"--ledger '{ledger}' is not a usable admission ledger (SQLite): {exc}")
    except OSError as exc:
        _fail(f"--ledger '{ledger}': {exc.strerror or exc}")
    shown = ", ".join(f"{ds}={eps:g}" for ds, eps in sorted(caps.items())) or "none"
    signed = f"; signing keys of {', '.join(trusted)}" if trusted else ("; no signing key trusted" if checks else "")
    needed = "; every job must be signed" if required else ""
    typer.echo(f"node ledger {ledger}: purposes {', '.join(purpose)}; epsilon caps {shown}{signed}{needed}")


def _parse_trusted_keys(items: list[str]) -> dict[str, str]:
    """--trust-key USER=BASE64 items, each key checked as a registered principal's would be."""
    from pydantic import ValidationError

    from policies.loader import UserEntry

    keys: dict[str, str] = {}
    for item in items:
        user, sep, key = item.partition("=")
        try:
            if not sep:
                raise ValueError
            UserEntry(id=user, agency="node", role="analyst", tier="gold", signing_key=key)
        except (ValueError, ValidationError):
            _fail(f"--trust-key '{item[:60]}' must be USER=BASE64 with an Ed25519 public key (xgate train keygen)")
        if keys.setdefault(user, key) != key:  # the ledger trusts one key per analyst: never the last silently
            _fail(f"--trust-key gives '{user}' two keys: the node trusts one key per analyst, give one")
    return keys


def _parse_caps(items: list[str]) -> dict[str, float]:
    caps: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            eps = float(value)
        except ValueError:
            eps = -1.0
        if not sep or not name or not eps >= 0 or eps == float("inf"):
            _fail(f"--cap '{item}' must be DATASET=EPSILON with EPSILON >= 0")
        if caps.setdefault(name, eps) != eps:  # which budget was meant is not ours to guess
            _fail(f"--cap gives dataset '{name}' two budgets: {caps[name]:g} and {eps:g}; give one")
    return caps


def _store_datasets(store: Path) -> list[str]:
    if not store.exists():
        _fail(f"node store '{store}' does not exist (load data with `xgate node load` first)")
    if store.is_dir():
        _fail(f"--store '{store}' is a directory, not a node store file")
    try:
        with contextlib.closing(sqlite3.connect(f"{store.absolute().as_uri()}?mode=ro", uri=True)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            held = (
                [str(r[0]) for r in conn.execute("SELECT DISTINCT dataset FROM elements ORDER BY 1")]
                if "elements" in tables
                else []
            )
    except sqlite3.Error:
        _fail(f"'{store}' is not a node store")
    if tables and "elements" not in tables:
        _fail(f"'{store}' is not a node store")
    if not held:  # caps and purposes for no data: every job would be refused, or run unbudgeted later
        _fail(f"--store '{store}': store holds no datasets: load one first (`xgate node load`)")
    return held


@app.command()
def split(
    config: Path = typer.Option(..., "--config", help="the node's config TOML (its pseudonym key)"),
    data: Path = typer.Option(..., "--data", help="the CSV/Parquet extract holding the subjects"),
    id_column: str = typer.Option(..., "--id-column", help="column of national ids"),
    out: Path = typer.Option(..., "--out", help="holdout file to write (one pseudonym a line)"),
    fraction: float = typer.Option(0.2, "--fraction", min=0.01, max=0.9, help="share reserved for evaluation"),
    seed: int = typer.Option(0, "--seed", min=0, help="changes which subjects are drawn"),
    column: str | None = typer.Option(
        None, "--column", help="instead of drawing: reserve the rows whose COLUMN equals --value"
    ),
    value: str | None = typer.Option(None, "--value", help="with --column"),
) -> None:
    """Write a reproducible evaluation holdout as pseudonyms, computed at the node with its own key.

    Drawn: a subject is reserved when SHA-256(seed, its pseudonym) falls below the fraction, so the
    same ids, key and seed give the same holdout at any node. By column: the rows whose column holds
    --value (e.g. an existing train/test flag). National ids never leave the node; the file lists
    pseudonyms only, sorted. Name the file as `holdout` of the node (nodes file or [training]).
    """
    from app.holdout import write_holdout

    if (column is None) != (value is None):
        _fail("--column and --value go together")
    try:
        report = write_holdout(config, data, id_column, out, fraction=fraction, seed=seed, column=column, value=value)
    except XgateError as exc:
        _fail(exc.message)
    typer.echo(f"holdout {out}: {report[0]} of {report[1]} subjects reserved for evaluation")
