"""Job progress as an analyst sees it: `status` moves to `starting` once admitted, a failed job is
recorded once naming the agency that failed, `xgate train logs` shows each node's admission and
the rounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.train_cli import app, progress_lines
from federated import datasets
from federated.admission import LedgerAdmission
from federated.control_api import RunInfo
from federated.events import JsonlSink, make_event, read_events
from federated.job_run import JobEvents, _failure
from federated.jobs import parse_job
from federated.runner import NodeSpec, run_job
from xgate.errors import NodeUnavailable

FEATS = ["civil.age", "tax.income"]


def _job(**kw: Any) -> Any:
    return parse_job(
        {
            "job_id": "prog-1",
            "purpose": "fraud-model",
            "mode": "horizontal",
            "features": FEATS,
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 2,
            "secagg": False,
            "min_nodes": 1,
            **kw,
        }
    )


def test_a_failure_is_recorded_once_naming_the_agency(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    emit = JobEvents(_job(), tmp_path, seen.append)
    emit(make_event("prog-1", "job_failed", agency="tax", reason="round 1: node lost"))  # relayed from the server
    emit.fail(NodeUnavailable("tax", "round 1: node lost"))
    assert [e["event"] for e in seen] == ["job_failed"]
    other: list[dict[str, Any]] = []
    JobEvents(_job(), tmp_path, other.append).fail(NodeUnavailable("civil", "SuperNode did not start"))
    assert other[0]["agency"] == "civil" and "did not start" in other[0]["reason"]


def test_failure_names_the_dropped_agencies_of_the_failing_round(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "server-events.jsonl")
    assert _failure(tmp_path, {}) == (None, "federation")
    sink(make_event("j", "node_dropped", round=1, node_id=11))
    sink(make_event("j", "round_completed", round=1))
    sink(make_event("j", "node_dropped", round=2, node_id=12))
    sink(make_event("j", "update_rejected", round=2, node_id=13, reason="NaN"))
    sink(make_event("j", "job_failed", round=2, reason="round 2: 1 usable updates, job needs 2 nodes"))
    reason, agency = _failure(tmp_path, {11: "region0", 12: "region1", 13: "region2"})
    assert agency == "region1, region2" and "usable updates" in str(reason)
    sink(make_event("j", "job_failed", agency="tax", reason="tax did not answer"))
    assert _failure(tmp_path, {})[1] == "tax"


def test_status_says_starting_once_admitted_and_the_failure_is_recorded_once(tmp_path: Path) -> None:
    subj, cols, _ = datasets.synthetic_population(60, seed=4)
    store = tmp_path / "s.sqlite"
    datasets.write_store(store, "synth", subj, {e: cols[e] for e in [*FEATS, "tax.label"]})
    node = NodeSpec("region0", store, tmp_path / "l.sqlite")
    LedgerAdmission(node.ledger, node.store).configure(["fraud-model"], {"synth": 1.0})
    states: list[str] = []
    events: list[dict[str, Any]] = []

    def on_federation(_fed: Any) -> None:  # before any Flower process starts
        states.append(json.loads((tmp_path / "job" / "status.json").read_text())["state"])
        raise NodeUnavailable("region0", "SuperNode could not start")

    with pytest.raises(NodeUnavailable):
        run_job(_job(), [node], job_dir=tmp_path / "job", on_event=events.append, on_federation=on_federation,
                insecure=True)  # fmt: skip
    assert states == ["starting"]
    failed = [e for e in events if e["event"] == "job_failed"]
    assert len(failed) == 1 and failed[0]["agency"] == "region0"
    assert json.loads((tmp_path / "job" / "status.json").read_text())["state"] == "failed"


def test_logs_show_admission_rounds_and_outcome(tmp_path: Path) -> None:
    d = tmp_path / "prog-1"
    sink = JsonlSink(d / "events.jsonl")
    sink(make_event("prog-1", "job_submitted", mode="vertical", purpose="fraud-model"))
    sink(make_event("prog-1", "job_approved", agency="civil", epsilon=0.0, reason="approved"))
    sink(make_event("prog-1", "job_refused", agency="tax", epsilon=0.0, reason="purpose not allowed",
                    redecided="node policy changed"))  # fmt: skip
    sink(make_event("prog-1", "round_completed", round=1, agencies=["civil", "tax"]))
    sink(make_event("prog-1", "round_evaluated", round=1, auc=0.8123))
    sink(make_event("prog-1", "secagg_round", round=1, unmasked=True, masked_vectors=3, shares=3, threshold=2))
    sink(make_event("prog-1", "secagg_round", round=1, phase="statistics", unmasked=True, masked_vectors=3,
                    shares=3, threshold=2))  # fmt: skip
    sink(make_event("prog-1", "job_failed", agency="tax", reason="tax did not answer"))
    lines = progress_lines(json.loads(f"[{','.join((d / 'events.jsonl').read_text().splitlines())}]"))
    text = "\n".join(lines)
    assert "admission at civil: approved" in text and "admission at tax: refused: purpose not allowed" in text
    assert "decided again: node policy changed" in text and "round 1 completed (civil, tax)" in text
    assert "AUC 0.8123" in text and "failed at tax: tax did not answer" in text
    assert "round 1: secure aggregation unmasked: 3 masked updates, 3 shares per secret, threshold 2" in text
    assert "statistics round: secure aggregation unmasked" in text  # not a second "round 1"
    res = CliRunner().invoke(app, ["logs", "prog-1", "--root", str(tmp_path)])
    assert res.exit_code == 0 and res.output.count("\n") == len(lines)
    res = CliRunner().invoke(app, ["logs", "prog-1", "--root", str(tmp_path), "--flower"])
    assert res.exit_code == 1 and "no Flower run log yet" in res.output


@pytest.fixture(autouse=True)
def _status_asked_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fakes below end their run when asked for its status: ask at once, not after 30 s."""
    from federated import job_run

    monkeypatch.setattr(job_run, "FIRST_STATUS_S", 0.0)


class _RunEndingWithEvents:
    """A federation whose ServerApp writes its last events after the follower's last read, just as
    the SuperLink reports the run finished (the race the job's events must survive)."""

    def __init__(self, job_dir: Path) -> None:
        self.events = JsonlSink(job_dir / "server-events.jsonl")

    def submit(self, app_dir: Path) -> int:
        return 7

    def run_info(self, run_id: int) -> RunInfo:
        self.events(make_event("prog-1", "round_completed", round=1, participants=[11, 12], aggregate_sha256="0" * 64))
        self.events(make_event("prog-1", "job_failed", reason="node left", node_id=12))
        return RunInfo("finished:completed", 5)

    def logs(self, run_id: int) -> str:
        return ""


def test_events_written_as_the_run_ends_still_name_their_agencies(tmp_path: Path) -> None:
    from federated.job_run import JobResult, Status, follow_run

    job = _job()
    seen: list[dict[str, Any]] = []
    lines: list[str] = []
    result = JobResult(job.job_id, None, "running", tmp_path)
    fed = _RunEndingWithEvents(tmp_path)
    follow_run(fed, job, tmp_path, {11: "civil", 12: "tax"}, result, seen.append, Status(tmp_path), lines.append)  # type: ignore[arg-type]
    done = next(e for e in seen if e["event"] == "round_completed")
    assert done["agencies"] == ["civil", "tax"]
    assert next(e for e in seen if e["event"] == "job_failed")["agency"] == "tax"
    assert lines == ["[##########          ] round 1/2 round_completed"]


class _LinkRun:
    """A long-lived SuperLink (federated/local_link.py) whose run `run_id` has its ServerApp write
    `writes` to the job's server events, then is reported as `ends` ("running": it never ends)."""

    def __init__(self, job_dir: Path, run_id: int, writes: list[dict[str, Any]], ends: str) -> None:
        self.sink, self.run_id, self.writes, self.ends = (
            JsonlSink(job_dir / "server-events.jsonl"),
            run_id,
            writes,
            ends,
        )
        self.stopped: list[int] = []

    def submit(self, app_dir: Path) -> int:
        return self.run_id

    def run_info(self, run_id: int) -> RunInfo:
        for ev in self.writes:
            self.sink(ev)
        self.writes = []
        return RunInfo(self.ends, 0)

    def logs(self, run_id: int) -> str:
        return f"flower log of run {run_id}\n"

    def stop_run(self, run_id: int) -> None:
        self.stopped.append(run_id)


def _run_on_link(tmp_path: Path, fed: _LinkRun, **job: Any) -> list[dict[str, Any]]:
    """run_job of a vertical-free job on a fake long-lived link; the events it emitted."""
    import datetime as dt

    from federated.local_link import LocalLink

    store = tmp_path / "s.sqlite"
    if not store.exists():
        subj, cols, _ = datasets.synthetic_population(60, seed=4)
        datasets.write_store(store, "synth", subj, {e: cols[e] for e in [*FEATS, "tax.label"]})
        LedgerAdmission(tmp_path / "l.sqlite", store).configure(["fraud-model"], {"synth": 1.0})
    node = NodeSpec("civil", store, tmp_path / "l.sqlite")
    link = LocalLink(fed, {"civil": 11}, dt.datetime.now(dt.UTC), 0.0)  # type: ignore[arg-type]
    seen: list[dict[str, Any]] = []
    with pytest.raises(NodeUnavailable) as failed:
        run_job(_job(**job), [node], job_dir=tmp_path / "prog-1", on_event=seen.append, local=link)
    seen.append({"event": "raised", "reason": failed.value.message, "agency": failed.value.agency})
    return seen


def test_a_resubmitted_run_reads_only_its_own_server_events(tmp_path: Path) -> None:
    """A failed job id submitted again: the earlier run's failure is neither replayed into the new
    run nor stops the new run's own failure from being recorded (and shown by `train logs`)."""
    old = make_event("prog-1", "job_failed", agency="civil", reason="label holder is not connected")
    first = _run_on_link(tmp_path, _LinkRun(tmp_path / "prog-1", 7, [old], "finished:failed"))
    assert first[-1]["reason"] == "agency 'civil': label holder is not connected"
    fed = _LinkRun(tmp_path / "prog-1", 8, [], "running")
    second = _run_on_link(tmp_path, fed, job_timeout_s=1, rounds=3)
    timed_out = "agency 'federation': job timed out after 1 s"
    assert second[-1]["reason"] == timed_out and set(fed.stopped) == {8}
    failed = [e for e in second if e["event"] == "job_failed"]
    assert [(e.get("agency"), e["reason"]) for e in failed] == [("federation", timed_out)]
    run = CliRunner().invoke(app, ["logs", "prog-1", "--root", str(tmp_path)]).output.splitlines()
    after = run[next(i for i, line in enumerate(run) if "run 8 started" in line) + 1 :]
    assert [line[9:] for line in after] == [f"failed at federation: {timed_out}"]
    assert sum("label holder is not connected" in line for line in run) == 1  # the first run's, kept
    assert [line[9:].split(" ")[0] for line in run].count("resubmitted") == 1 and "resubmitted (" in run[4]
    # The earlier run's files are kept aside, not read as the new run's.
    assert read_events(tmp_path / "prog-1" / "earlier-runs" / "1" / "server-events.jsonl")[0] == [old]


def test_a_resubmitted_run_that_fails_reports_its_own_reason(tmp_path: Path) -> None:
    old = make_event("prog-1", "job_failed", agency="civil", reason="label holder is not connected")
    _run_on_link(tmp_path, _LinkRun(tmp_path / "prog-1", 7, [old], "finished:failed"))
    new = make_event("prog-1", "job_failed", round=1, reason="round 1: 0 usable updates, job needs 1 nodes")
    dropped = make_event("prog-1", "node_dropped", round=1, node_id=11)
    second = _run_on_link(tmp_path, _LinkRun(tmp_path / "prog-1", 8, [dropped, new], "finished:failed"), rounds=3)
    assert second[-1] == {"event": "raised", "reason": f"agency 'civil': {new['reason']}", "agency": "civil"}
    assert [e["reason"] for e in second if e["event"] == "job_failed"] == [new["reason"]]


def test_a_resubmitted_run_that_completes_carries_no_earlier_failure(tmp_path: Path) -> None:
    from federated.job_run import JobResult, Status, follow_run

    job = _job()
    JsonlSink(tmp_path / "server-events.jsonl")(make_event("prog-1", "job_failed", agency="tax", reason="old"))
    (tmp_path / "server-summary.json").write_text("{}")  # an earlier run's, if it wrote one
    done = make_event("prog-1", "round_completed", round=1, participants=[11], aggregate_sha256="0" * 64)
    seen: list[dict[str, Any]] = []
    result = JobResult(job.job_id, None, "running", tmp_path)
    fed = _LinkRun(tmp_path, 8, [done], "finished:completed")
    follow_run(fed, job, tmp_path, {11: "civil"}, result, seen.append, Status(tmp_path), lambda _: None)  # type: ignore[arg-type]
    assert [e["event"] for e in seen] == ["run_started", "round_completed"]
    assert not (tmp_path / "server-summary.json").exists()  # this run wrote none: the earlier one is aside
    assert (tmp_path / "run.log").read_text() == "flower log of run 8\n"


def test_a_node_that_dropped_before_any_evaluation_is_named_and_bounds_the_jobs_epsilon(tmp_path: Path) -> None:
    from federated.job_run import JobResult, Status, finish

    job = _job(dp={"epsilon": 2.0, "delta": 1e-6, "clip": 1.0, "unit": "record"})
    reported = {"region0": {"dp_epsilon": 1.2, "dp_sigma": 3.0, "dp_sample_rate": 0.02, "dp_steps": 40}}
    summary = {"evaluation": {"auc": 0.8}, "dp": {"unit": "record", "epsilon": 1.2, "delta": 1e-6, "clip": 1.0,
                                                  "nodes": reported}}  # fmt: skip
    (tmp_path / "server-summary.json").write_text(json.dumps(summary))
    decisions = {a: {"approved": True, "reason": "approved", "epsilon": 2.0} for a in ("region0", "region1")}
    events: list[dict[str, Any]] = []
    result = finish(job, JobResult("prog-1", 1, "running", tmp_path), 0.0, decisions,
                    {"region0": "a" * 64, "region1": "b" * 64}, events.append, Status(tmp_path))  # fmt: skip
    # region1 took part (its data digest) but left before reporting its accountant: charged 2.0 by its ledger.
    assert result.epsilon == 2.0
    for name in ("model.json", "report.json"):
        dp = json.loads((tmp_path / name).read_text())["dp"]
        assert dp["not_reported"] == ["region1"] and dp["charged_not_reported"] == {"region1": 2.0}
        assert dp["epsilon"] == 2.0 and set(dp["nodes"]) == {"region0"}
    assert [e["epsilon"] for e in events if e["event"] == "job_completed"] == [2.0]
    # Every node reported: the accountants' figure stands.
    (tmp_path / "server-summary.json").write_text(json.dumps(summary))
    assert finish(job, JobResult("prog-1", 1, "running", tmp_path), 0.0, decisions, {"region0": "a" * 64},
                  events.append, Status(tmp_path)).epsilon == 1.2  # fmt: skip
