"""`xgate train ...` on bad input: job files (strict types, finite numbers, no silent defaults),
`train allow` settings no job could match, unreadable files and directories where files belong,
node paths checked before anything starts, corrupt status/events files, and a local job whose
runner process was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from typer.testing import CliRunner

from app.holdout import write_holdout
from app.train_cli import app
from federated import datasets
from federated.events import JsonlSink, make_event, read_events
from federated.jobs import load_job, parse_job
from nodes.store import NodeStore
from xgate.errors import ConfigError, InvalidInput, NotFound

FEATS = ["civil.age", "tax.income"]
BYO = Path(__file__).resolve().parents[1] / "data" / "byo"
runner = CliRunner()
RUNNER_LOCK = "runner.lock"  # the lock a local job's runner holds while it runs
RUNNER_ENDED = "runner process ended without finishing"


def _invoke(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _body(**kw: Any) -> dict[str, Any]:
    return {
        "job_id": "edge-1",
        "purpose": "fraud-model",
        "mode": "horizontal",
        "features": FEATS,
        "label": "tax.label",
        "label_holder": "tax",
        "rounds": 1,
        "secagg": False,
        "min_nodes": 1,
        **kw,
    }


def _job_file(tmp_path: Path, text: str | None = None, **kw: Any) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(tomli_w.dumps(_body(**kw)) if text is None else text, encoding="utf-8")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    subj, cols, _ = datasets.synthetic_population(40, seed=2)
    path = tmp_path / "node" / "store.sqlite"
    datasets.write_store(path, "synth", subj, {e: cols[e] for e in [*FEATS, "tax.label"]})
    return path


def _nodes_file(tmp_path: Path, store: Path, **extra: str) -> Path:
    path = tmp_path / "nodes.toml"
    node = {"agency": "tax", "store": str(store), "ledger": str(tmp_path / "node" / "ledger.sqlite"), **extra}
    path.write_text(tomli_w.dumps({"nodes": [node]}), encoding="utf-8")
    return path


# -- 1. job files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ('[encodings]\n"civil.age" = { method = "buckets", edges = [nan, 4] }\n', "encodings.civil.age.edges.0"),
        ('[encodings]\n"civil.age" = { method = "buckets", edges = [2, inf] }\n', "encodings.civil.age.edges.1"),
        ("[dp]\nepsilon = inf\ndelta = 1e-6\nclip = 1.0\n", "dp.epsilon"),
        ("l2 = nan\n", "l2"),
    ],
)
def test_non_finite_numbers_in_a_job_file_are_refused_by_field(tmp_path: Path, fields: str, where: str) -> None:
    base = tomli_w.dumps(_body())
    # Tables last: scalars after a [table] header would belong to it.
    path = _job_file(tmp_path, fields + base if not fields.startswith("[") else base + fields)
    with pytest.raises(InvalidInput, match="finite number") as err:
        load_job(path)
    assert f"invalid job: {where}:" in err.value.message and str(path) in err.value.message
    res = _invoke("sign", "--job", path, "--key", tmp_path / "k.pem", "--requester", "an", "--out", tmp_path / "o")
    assert res.exit_code == 1 and where in res.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("field", ["learning_rate", "batch_size"])
def test_zero_learning_rate_or_batch_size_is_refused_not_replaced_by_the_default(field: str) -> None:
    with pytest.raises(InvalidInput, match=f"{field}: .*got 0.*leave it out for the mode's default"):
        parse_job(_body(**{field: 0}))
    defaults = parse_job(_body())  # left out (or JSON null): the mode's default, as before
    assert (defaults.learning_rate, defaults.batch_size) == (0.5, 256)
    assert parse_job(_body(**{field: None})) == defaults


@pytest.mark.parametrize(
    ("field", "value"),
    [("rounds", "3"), ("secagg", "no"), ("rounds", 3.0), ("rounds", True), ("seed", "1"), ("label_dp", "2")],
)
def test_job_values_are_not_coerced(field: str, value: Any) -> None:
    with pytest.raises(InvalidInput, match=f"invalid job: {field}: Input should be a valid"):
        parse_job(_body(**{field: value}))


def test_strict_job_files_still_take_strings_for_enums_lists_and_toml_date_times(tmp_path: Path) -> None:
    path = _job_file(
        tmp_path,
        "valid_until = 2099-01-01T00:00:00Z\n"  # unquoted: a TOML date-time
        + tomli_w.dumps(_body(mode="vertical", dp={"epsilon": 1, "delta": 1e-6, "clip": 1, "unit": "record"}))
        + '[encodings]\n"civil.age" = { method = "buckets", edges = [20, 40.5] }\n"tax.income" = "log"\n',
    )
    job = load_job(path)
    assert job.valid_until == "2099-01-01T00:00:00+00:00" and job.dp is not None and job.dp.epsilon == 1.0
    assert job.encodings["civil.age"].edges == (20.0, 40.5) and job.features == tuple(FEATS)
    assert parse_job(json.loads(job.model_dump_json())) == job  # the REST body / run config round trip


# -- 2. train allow ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--purpose", "fraud-model", "--default-cap", "nan"], "--default-cap nan must be a finite number"),
        (["--purpose", "fraud-model", "--default-cap", "inf"], "--default-cap inf must be a finite number"),
        (["--purpose", ""], "--purpose '' can match no job"),
        (
            ["--purpose", "fraud-model", "--purpose", "Tax Compliance!!"],
            "--purpose 'Tax Compliance!!' can match no job",
        ),
    ],
)
def test_allow_refuses_caps_and_purposes_no_job_can_use(store: Path, args: list[str], message: str) -> None:
    ledger = store.parent / "ledger.sqlite"
    res = _invoke("allow", "--ledger", ledger, "--store", store, *args)
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
    assert not ledger.exists()  # nothing configured


def test_allow_refuses_a_store_holding_no_datasets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    NodeStore.open(empty).close()  # the node schema, nothing loaded
    blank = tmp_path / "blank.sqlite"
    blank.write_bytes(b"")  # left empty
    for path in (empty, blank):
        res = _invoke("allow", "--ledger", tmp_path / "l.sqlite", "--store", path, "--purpose", "fraud-model")
        assert res.exit_code == 1 and "store holds no datasets: load one first" in res.output, res.output
    assert not (tmp_path / "l.sqlite").exists()


def test_allow_names_a_store_or_ledger_that_is_no_file_of_its_kind(tmp_path: Path, store: Path) -> None:
    res = _invoke("allow", "--ledger", tmp_path / "l.sqlite", "--store", tmp_path, "--purpose", "fraud-model")
    assert res.exit_code == 1 and "is a directory, not a node store" in res.output
    res = _invoke("allow", "--ledger", tmp_path, "--store", store, "--purpose", "fraud-model")
    assert res.exit_code == 1 and f"--ledger '{tmp_path}' is a directory" in res.output
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all, but long enough to have a header " * 4)
    res = _invoke("allow", "--ledger", junk, "--store", store, "--purpose", "fraud-model")
    assert res.exit_code == 1 and f"--ledger '{junk}' is not a usable admission ledger" in res.output
    assert "Traceback" not in res.output


def test_allow_takes_a_repeated_purpose_once(store: Path) -> None:
    import sqlite3

    ledger = store.parent / "ledger.sqlite"
    res = _invoke("allow", "--ledger", ledger, "--store", store, "--purpose", "a-one", "--purpose", "a-one",
                  "--purpose", "fraud-model", "--default-cap", "3")  # fmt: skip
    assert res.exit_code == 0 and "purposes a-one, fraud-model; epsilon caps synth=3" in res.output, res.output
    with sqlite3.connect(ledger) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT purpose FROM purposes")) == ["a-one", "fraud-model"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cap", "synth=1", "--cap", "synth=2"], "--cap gives dataset 'synth' two budgets: 1 and 2"),
        (
            ["--trust-key", f"an-liu={'A' * 43}=", "--trust-key", f"an-liu={'B' * 43}="],
            "--trust-key gives 'an-liu' two keys",
        ),
    ],
)
def test_allow_refuses_one_setting_given_two_values(store: Path, args: list[str], message: str) -> None:
    ledger = store.parent / "ledger.sqlite"
    res = _invoke("allow", "--ledger", ledger, "--store", store, "--purpose", "fraud-model", *args)
    assert res.exit_code == 1 and message in " ".join(res.output.split()), res.output
    assert not ledger.exists()  # nothing configured, neither of the two
    res = _invoke("allow", "--ledger", ledger, "--store", store, "--purpose", "fraud-model", *args[:2], *args[:2])
    assert res.exit_code == 0, res.output  # the same value twice means the same thing


def test_allow_refuses_the_store_as_its_own_ledger_or_a_ledger_under_a_file(store: Path) -> None:
    res = _invoke("allow", "--ledger", store.parent / "." / store.name, "--store", store, "--purpose", "fraud-model")
    assert res.exit_code == 1 and "--ledger and --store name the same file" in res.output, res.output
    res = _invoke("allow", "--ledger", store / "ledger.sqlite", "--store", store, "--purpose", "fraud-model")
    assert res.exit_code == 1 and f"'{store}' is a file, not a directory" in res.output, res.output


# -- 3. unreadable files -------------------------------------------------------------------------


@pytest.fixture
def node_config(tmp_path: Path) -> Path:
    (tmp_path / "pseudonym.key").write_bytes(b"\x07" * 32)
    text = (BYO / "tax.toml").read_text().replace("pseudonym.key", str(tmp_path / "pseudonym.key"))
    (tmp_path / "tax.toml").write_text(text)
    return tmp_path / "tax.toml"


def test_split_refuses_unreadable_data_and_a_directory_as_out(tmp_path: Path, node_config: Path) -> None:
    args: list[str | Path] = ["split", "--config", node_config, "--id-column", "national_id"]
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("national_id,name\n1,Jos\u00e9\n".encode("latin-1"))
    res = _invoke(*args, "--data", latin1, "--out", tmp_path / "h.txt")
    assert res.exit_code == 1 and "not UTF-8 text" in res.output and str(latin1) in res.output
    res = _invoke(*args, "--data", tmp_path, "--out", tmp_path / "h.txt")
    assert res.exit_code == 1 and "is a directory" in res.output
    out = tmp_path / "outdir"
    out.mkdir()
    res = _invoke(*args, "--data", BYO / "tax.csv", "--out", out)
    assert res.exit_code == 1 and f"--out {out} is a directory" in res.output, res.output
    assert not (tmp_path / "outdir.tmp").exists() and not (tmp_path / "h.txt").exists()


def test_split_removes_its_temporary_file_when_the_write_fails(
    tmp_path: Path, node_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Path, target: Any) -> Path:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "replace", refuse)
    with pytest.raises(InvalidInput, match="cannot write the holdout"):
        write_holdout(node_config, BYO / "tax.csv", "national_id", tmp_path / "h.txt", fraction=0.2, seed=0)
    assert not (tmp_path / "h.txt.tmp").exists() and not (tmp_path / "h.txt").exists()


def test_job_and_nodes_files_that_are_directories_or_not_utf8(tmp_path: Path, store: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('job_id = "caf\u00e9"\n'.encode("latin-1"))
    nodes = _nodes_file(tmp_path, store)
    for job, problem in ((tmp_path, "is a directory"), (latin1, "is not UTF-8 text")):
        res = _invoke("submit", "--job", job, "--nodes", nodes, "--root", tmp_path / "jobs")
        assert res.exit_code == 1 and f"job file '{job}' {problem}" in res.output, res.output
        res = _invoke("sign", "--job", job, "--key", tmp_path / "k", "--requester", "an", "--out", tmp_path / "o")
        assert res.exit_code == 1 and f"job file '{job}' {problem}" in res.output
    res = _invoke("submit", "--job", _job_file(tmp_path), "--nodes", tmp_path, "--root", tmp_path / "jobs")
    assert res.exit_code == 1 and f"nodes file '{tmp_path}' is a directory" in res.output


def test_sign_out_a_directory_or_under_a_missing_one(tmp_path: Path) -> None:
    from crypto.envelope import SigningKey

    SigningKey.generate("an-liu", "job-signing").save(tmp_path / "k.pem")
    base: list[str | Path] = [
        "sign",
        "--job",
        _job_file(tmp_path),
        "--key",
        tmp_path / "k.pem",
        "--requester",
        "an-liu",
    ]
    res = _invoke(*base, "--out", tmp_path)
    assert res.exit_code == 1 and f"--out '{tmp_path}' is a directory" in res.output
    res = _invoke(*base, "--out", tmp_path / "nope" / "signed.toml")
    assert res.exit_code == 1 and f"directory '{tmp_path / 'nope'}' does not exist" in res.output
    res = _invoke(*base, "--out", tmp_path / "signed.toml")
    assert res.exit_code == 0 and load_job(tmp_path / "signed.toml").signature
    assert not (tmp_path / "signed.toml.tmp").exists()


def _status(root: Path, job_id: str, state: str, **fields: Any) -> Path:
    (root / job_id).mkdir(parents=True, exist_ok=True)
    (root / job_id / "status.json").write_text(json.dumps({"state": state, **fields}))
    return root / job_id


def test_status_shows_what_each_admitting_node_charged(tmp_path: Path) -> None:
    """An analyst tracks the nodes' budgets; status said only "completed auc=..."."""
    approved = {"approved": True, "reason": "approved"}
    _status(
        tmp_path, "dp-1", "completed", evaluation={"auc": 0.71},
        decisions={"civil": {**approved, "epsilon": 4.0}, "tax": {**approved, "epsilon": 0.0, "label_dp_epsilon": 2.0}},
    )  # fmt: skip
    _status(tmp_path, "plain-1", "completed", decisions={"civil": {**approved, "epsilon": 0.0}})
    _status(tmp_path, "refused-1", "refused", decisions={"civil": {"approved": False, "reason": "no", "epsilon": 4.0}})
    lines = _invoke("status", "--root", tmp_path).output.splitlines()
    assert lines == [
        "dp-1: completed auc=0.7100 epsilon: civil 4, tax 2 label DP",
        "plain-1: completed",
        "refused-1: refused",
    ]


def test_a_corrupt_status_is_reported_and_the_other_jobs_still_list(tmp_path: Path, store: Path) -> None:
    _status(tmp_path, "good-1", "completed", evaluation={"auc": 0.8})
    _status(tmp_path, "zzz-bad", "running")
    (tmp_path / "zzz-bad" / "status.json").write_text('{"state": "runn')
    _status(tmp_path, "odd-1", "failed", evaluation={"auc": "n/a"})  # valid JSON, odd values
    res = _invoke("status", "--root", tmp_path)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "good-1: completed auc=0.8000" in res.output and "odd-1: failed" in res.output
    assert "error: job 'zzz-bad': status.json is unreadable" in res.output
    res = _invoke("status", "zzz-bad", "--root", tmp_path)
    assert res.exit_code == 1 and "status.json is unreadable" in res.output
    res = _invoke("submit", "--job", _job_file(tmp_path, job_id="zzz-bad"), "--nodes", _nodes_file(tmp_path, store),
                  "--root", tmp_path)  # fmt: skip
    assert res.exit_code == 1 and "status.json is unreadable" in res.output, res.output


def test_logs_name_a_corrupt_events_line(tmp_path: Path) -> None:
    d = _status(tmp_path, "job-1", "failed")
    JsonlSink(d / "events.jsonl")(make_event("job-1", "job_submitted", mode="vertical", purpose="p-1"))
    with (d / "events.jsonl").open("ab") as fh:
        fh.write(b'{"event": "round_compl\n')
    res = _invoke("logs", "job-1", "--root", tmp_path)
    assert res.exit_code == 1 and "events.jsonl: the line at byte" in res.output and "not a JSON event" in res.output
    (d / "events.jsonl").write_bytes(b"[1, 2]\n")
    with pytest.raises(InvalidInput, match="not a JSON object"):
        read_events(d / "events.jsonl")
    (d / "events.jsonl").write_bytes(b'{"event": "run_started", "nodes": 5}\n{"event": "job_failed", "reason": "x"}\n')
    res = _invoke("logs", "job-1", "--root", tmp_path)  # well-formed JSON, ill-typed fields: the rest still shows
    assert res.exit_code == 0 and res.output.split("\n")[:2] == [" (unreadable run_started event)", " failed: x"]


# -- 4. node paths, before anything starts -------------------------------------------------------


def test_submit_checks_every_nodes_files_before_starting_anything(tmp_path: Path, store: Path) -> None:
    root = tmp_path / "jobs"
    job = _job_file(tmp_path)
    missing = tmp_path / "node" / "holdout.txt"
    res = _invoke("submit", "--job", job, "--nodes", _nodes_file(tmp_path, store, holdout=str(missing)), "--root", root)
    assert res.exit_code == 1 and f"node 'tax': holdout '{missing}' does not exist" in res.output, res.output
    assert not root.exists()  # nothing recorded, nothing started
    gone = tmp_path / "elsewhere" / "store.sqlite"
    res = _invoke("submit", "--job", job, "--nodes", _nodes_file(tmp_path, gone), "--root", root)
    assert res.exit_code == 1 and f"node 'tax': store '{gone}' does not exist" in res.output
    res = _invoke("submit", "--job", job, "--nodes", _nodes_file(tmp_path, store, policy_dir=str(job)), "--root", root)
    assert res.exit_code == 1 and f"policy_dir '{job}' is not a directory" in res.output
    assert not root.exists()  # not even the jobs directory


def test_nodes_file_type_errors_name_each_field(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.toml"
    nodes.write_text('[[nodes]]\nagency = "tax"\nstore = 5\nledger = ["x"]\nholdout = 1\n')
    res = _invoke("submit", "--job", _job_file(tmp_path), "--nodes", nodes, "--root", tmp_path / "jobs")
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "validation errors" not in out
    for field in ("store", "ledger", "holdout"):
        assert f"nodes[0].{field} (agency 'tax'): Input is not a valid path" in out, out


def test_an_agency_name_a_certificate_cannot_carry_is_refused_by_entry(tmp_path: Path) -> None:
    """ "tax-north" failed after the job was read, as "agency id must match ...", naming neither
    the file nor the entry."""
    nodes = tmp_path / "nodes.toml"
    nodes.write_text('[[nodes]]\nagency = "tax-north"\nstore = "n.sqlite"\nledger = "n/l.sqlite"\n')
    res = _invoke("submit", "--job", _job_file(tmp_path), "--nodes", nodes, "--root", tmp_path / "jobs")
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and f"nodes file '{nodes}' is invalid: nodes[0].agency (agency 'tax-north'):" in out
    assert "should match pattern '^[a-z][a-z0-9_]{1,31}$'" in out and not (tmp_path / "jobs").exists()


def _two_nodes(tmp_path: Path, second: dict[str, str]) -> Path:
    path = tmp_path / "nodes.toml"
    first = {
        "agency": "tax",
        "store": str(tmp_path / "tax" / "store.sqlite"),
        "ledger": str(tmp_path / "tax" / "l.sqlite"),
    }
    path.write_text(tomli_w.dumps({"nodes": [first, {**first, **second}]}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (  # the reported case: one agency's SuperNode twice, failing 45 s into the run
            {},
            "nodes[1]: agency 'tax' is listed twice (also nodes[0]): each agency runs one node",
        ),
        (
            {"store": "{tmp}/civil/store.sqlite", "ledger": "{tmp}/civil/l.sqlite"},
            "nodes[1]: agency 'tax' is listed twice (also nodes[0]): each agency runs one node",
        ),
        (
            {"agency": "civil", "store": "{tmp}/tax/./store.sqlite", "ledger": "{tmp}/civil/l.sqlite"},
            "nodes[1] (agency 'civil'): store '{tmp}/tax/store.sqlite' is also the store of nodes[0] (agency 'tax')",
        ),
        (
            {"agency": "civil", "store": "{tmp}/civil/store.sqlite", "ledger": "{tmp}/tax/other.sqlite"},
            "nodes[1] (agency 'civil'): ledger '{tmp}/tax/other.sqlite' is in the directory of the ledger of nodes[0]"
            " (agency 'tax'), '{tmp}/tax': a node keeps its keys and run state beside its ledger",
        ),
        (
            {"agency": "civil", "store": "{tmp}/civil/store.sqlite", "ledger": "{tmp}/tax/store.sqlite"},
            "nodes[1] (agency 'civil'): ledger '{tmp}/tax/store.sqlite' is also the store of nodes[0] (agency 'tax')",
        ),
        (
            {"agency": "civil", "store": "{tmp}/civil/s.sqlite", "ledger": "{tmp}/civil/s.sqlite"},
            "nodes[1] (agency 'civil'): ledger '{tmp}/civil/s.sqlite' is also the store of nodes[1] (agency 'civil')",
        ),
    ],
)
def test_a_nodes_file_naming_one_node_twice_is_refused_as_it_is_read(
    tmp_path: Path, second: dict[str, str], message: str
) -> None:
    subj, cols, _ = datasets.synthetic_population(40, seed=2)
    for store in ("tax/store.sqlite", "civil/store.sqlite", "civil/s.sqlite"):  # every file but the clash is fine
        datasets.write_store(tmp_path / store, "synth", subj, {e: cols[e] for e in [*FEATS, "tax.label"]})
    tmp = str(tmp_path.resolve())
    nodes = _two_nodes(tmp_path, {k: v.format(tmp=tmp) for k, v in second.items()})
    root = tmp_path / "jobs"
    res = _invoke("submit", "--job", _job_file(tmp_path), "--nodes", nodes, "--root", root)
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and f"nodes file '{nodes}' is invalid: {message.format(tmp=tmp)}" in out, out
    assert "Traceback" not in out and not root.exists()  # refused before anything is recorded or started


def test_the_byo_nodes_file_names_each_node_once() -> None:
    from app.train_cli import _parse_nodes

    assert [n.agency for n in _parse_nodes(BYO / "nodes.toml")] == ["civil", "tax"]


def test_a_missing_store_is_named_by_its_full_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFound) as err:
        datasets.held_elements(Path("store.sqlite"))
    assert err.value.message == f"node store '{tmp_path / 'store.sqlite'}' does not exist"
    with pytest.raises(InvalidInput, match="is a directory"):
        datasets.held_elements(tmp_path)


# -- 5. a runner killed while its job ran --------------------------------------------------------

_HOLD_LOCK = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); " \
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"  # fmt: skip


def test_a_killed_runner_leaves_its_job_failed_not_running_for_ever(tmp_path: Path, store: Path) -> None:
    d = _status(tmp_path, "edge-1", "running", run_id=7)
    JsonlSink(d / "events.jsonl")(make_event("edge-1", "job_submitted", mode="horizontal", purpose="fraud-model"))
    with (d / "events.jsonl").open("ab") as fh:
        fh.write(b'{"event": "round_comp')  # the line the runner was writing when it was killed
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(d / RUNNER_LOCK)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        res = _invoke("status", "--root", tmp_path)
        assert res.exit_code == 0 and res.output.strip() == "edge-1: running", res.output  # alive: untouched
        res = _invoke("submit", "--job", _job_file(tmp_path), "--nodes", _nodes_file(tmp_path, store), "--root",
                      tmp_path)  # fmt: skip
        assert res.exit_code == 1 and "is being run by another process" in res.output
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    res = _invoke("status", "edge-1", "--root", tmp_path)
    assert res.exit_code == 0 and res.output.strip() == f"edge-1: failed ({RUNNER_ENDED})"
    status = json.loads((d / "status.json").read_text())
    assert status["state"] == "failed" and status["run_id"] == 7
    res = _invoke("logs", "edge-1", "--root", tmp_path)
    assert res.exit_code == 0 and res.output.strip().endswith(f"failed: {RUNNER_ENDED}"), res.output
    # The id can be submitted again: decided anew (refused here: the node admits no purpose yet).
    res = _invoke("submit", "--job", _job_file(tmp_path), "--nodes", _nodes_file(tmp_path, store), "--root", tmp_path)
    assert res.exit_code == 1 and "refused" in res.output and "already exists" not in res.output, res.output
    assert json.loads((d / "status.json").read_text())["state"] == "refused"


def test_a_job_without_a_runner_lock_is_left_as_recorded(tmp_path: Path, store: Path) -> None:
    """A job the gateway runs has no runner lock: neither status nor submit may call it dead."""
    d = _status(tmp_path, "edge-1", "running")
    assert _invoke("status", "--root", tmp_path).output.strip() == "edge-1: running"
    res = _invoke("submit", "--job", _job_file(tmp_path), "--nodes", _nodes_file(tmp_path, store), "--root", tmp_path)
    assert res.exit_code == 1 and "already exists" in res.output and "(state running)" in res.output
    assert not (d / RUNNER_LOCK).exists() and json.loads((d / "status.json").read_text())["state"] == "running"


def test_job_and_nodes_files_saved_with_a_bom_load_and_errors_say_what_is_wrong(tmp_path: Path) -> None:
    """Windows Notepad's BOM made every TOML file "not valid TOML ... (at line 1, column 1)"; a
    misspelt key reported only the real one missing; a non-UTF-8 byte read like a value, "(byte 0)"
    (thirteenth session's review)."""
    text = tomli_w.dumps(_body())
    path = tmp_path / "job.toml"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert load_job(path).features == tuple(FEATS)
    path.write_text(text.replace("rounds =", "rouds ="))
    with pytest.raises(InvalidInput, match=r"invalid job: rounds: Field required; unknown key\(s\): rouds"):
        load_job(path)
    path.write_bytes(b"\xfc" + text.encode())
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xfc at offset 0\)"):
        load_job(path)
    path.write_bytes(b"\xef\xbb\xbf\xfc" + text.encode())  # counted in the file, the BOM included
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xfc at offset 3\)"):
        load_job(path)


def test_a_job_id_is_a_job_id_and_the_root_a_directory(tmp_path: Path) -> None:
    """`train logs ../..` read another directory's events."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "events.jsonl").write_text('{"event": "elsewhere"}\n')
    for command in ("logs", "status"):
        res = _invoke(command, "..", "--root", tmp_path / "jobs")
        assert res.exit_code == 1 and "'..' is not a job id" in res.output, res.output
    res = _invoke("status", "--root", tmp_path / "nonexistent")  # before the first job: nothing wrong
    assert res.exit_code == 0 and "(no such directory yet)" in res.output, res.output


def test_a_model_scoring_every_held_out_row_on_one_side_is_explained_not_left_at_balanced_accuracy_half() -> None:
    """A short horizontal job printed "AUC 0.6071, balanced accuracy 0.5000" and nothing else: all
    122 held-out rows were scored above the prevalence threshold, its scores not yet calibrated."""
    from app.train_cli import _one_sided_note

    one_sided = {"confusion_matrix": {"tp": 42, "fp": 80, "tn": 0, "fn": 0}, "threshold": 0.2968}
    note = _one_sided_note(one_sided)
    assert note is not None and "every held-out row was scored positive" in note and "(0.297)" in note
    none_flagged = _one_sided_note({"confusion_matrix": {"tp": 0, "fp": 0, "tn": 70, "fn": 30}})
    assert none_flagged is not None and "scored negative" in none_flagged
    assert _one_sided_note({"confusion_matrix": {"tp": 30, "fp": 10, "tn": 60, "fn": 20}}) is None
    assert _one_sided_note({"confusion_matrix": {"tp": 0, "fp": 0, "tn": 0, "fn": 0}}) is None
    assert _one_sided_note({}) is None and _one_sided_note({"confusion_matrix": {"tp": 1.5}}) is None
