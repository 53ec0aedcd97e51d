"""A coordinator ships its own ClientApp in the job's app bundle (FAB) and names it in
`[tool.flwr.app.components] clientapp`: Flower's `flwr-clientapp` at every node imports it from
the bundle's directory and runs it next to the node's store (review: /tmp/review-b/fab/run_fab.py
read raw rows and the node config's key paths). A node runs xgate's installed ClientApps only
(federated/clientapp_entry.py): the foreign app never runs, the coordinator is told why, and
nothing of the node is in that answer.

Each message goes through the node's real ClientApp process entry (tests/clientapp_runtime.py:
Flower's `run_clientapp` with its FAB installation and loading; only the transport is replaced).

Flower's `run_clientapp` unpacked the bundle before any loader ran (review F: every file, any size,
and with `..` in `[project] version` outside $FLWR_HOME/apps, never deleted): the node checks the
FAB in memory and writes nothing of it, refused or not.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from federated import datasets
from federated.job_run import write_app
from federated.jobs import parse_job
from tests import clientapp_runtime
from tests.clientapp_runtime import message, run_node_clientapp

FOREIGN = """
import json, sqlite3
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

@app.query()
@app.train()
def steal(msg: Message, context: Context) -> Message:
    store = str(context.node_config["store"])
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT * FROM element_values LIMIT 5").fetchall()
    Path(MARKER).write_text(json.dumps({"node_config": dict(context.node_config), "rows": rows}, default=str))
    return Message(RecordDict({"cfg": ConfigRecord({"exfil": json.dumps(rows, default=str)})}), reply_to=msg)
"""


def _pyproject(
    clientapp: str,
    dependencies: list[str] | None = None,
    *,
    publisher: str = "xgate",
    name: str = "xgate-job",
    version: str = "1.0.0",
) -> str:
    return tomli_w.dumps(
        {
            "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
            "project": {
                "name": name,
                "version": version,
                "description": "not xgate's code",
                "license": "Apache-2.0",
                "dependencies": dependencies or [],
            },
            "tool": {
                "flwr": {
                    "app": {
                        "publisher": publisher,
                        "components": {"serverapp": "coord_server:app", "clientapp": clientapp},
                        "config": {},
                    }
                }
            },
        }
    )


def _node(tmp_path: Path) -> dict[str, str]:
    store, ledger = tmp_path / "tax" / "store.sqlite", tmp_path / "tax" / "ledger.sqlite"
    _, cols, _ = datasets.synthetic_population(40, seed=3)
    subjects = [f"person-{i:03d}" for i in range(40)]
    datasets.write_store(
        store, "tax_income", subjects, {"tax.income": cols["tax.income"], "tax.label": cols["tax.label"]}
    )
    return {"store": str(store), "agency": "tax", "ledger": str(ledger)}


def _foreign_bundle(tmp_path: Path, marker: Path, clientapp: str = "coord_client:app", where: str = "") -> Path:
    app = tmp_path / "coordinator-app"
    (app / where).mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(_pyproject(clientapp))
    (app / where / "coord_client.py").write_text(f"MARKER = {str(marker)!r}\n{FOREIGN}")
    return app


def _refused(reply: object, node_config: dict[str, str]) -> str:
    assert reply.has_error() and not reply.has_content()  # type: ignore[attr-defined]
    reason = str(reply.error.reason)  # type: ignore[attr-defined]
    for secret in (*node_config.values(), "person-0", "element_values"):
        assert secret not in reason or secret == node_config["agency"], secret
    return reason


@pytest.mark.parametrize("message_type", ["query", "train"])
def test_a_coordinators_own_clientapp_never_runs_at_the_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, message_type: str
) -> None:
    nc, marker = _node(tmp_path), tmp_path / "exfiltrated.json"
    app = _foreign_bundle(tmp_path, marker)
    reply = run_node_clientapp(monkeypatch, tmp_path / "flwr-home", app, message(message_type), nc, {})
    assert not marker.exists(), "the coordinator's code ran at the node and read its store"
    reason = _refused(reply, nc)
    assert reason.startswith("policy_denied: the job's app bundle carries 'coord_client.py'"), reason
    assert "xgate's installed ClientApps only" in reason


def test_a_bundle_naming_xgates_app_but_carrying_code_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A `federated/horizontal_client.py` of its own would shadow xgate's in a fresh process (the bundle's
    directory went first on sys.path): a bundle carries no code at all, whatever it names."""
    nc, marker = _node(tmp_path), tmp_path / "exfiltrated.json"
    app = _foreign_bundle(tmp_path, marker, clientapp="federated.horizontal_client:app", where="federated")
    (app / "federated" / "__init__.py").write_text("")
    reply = run_node_clientapp(monkeypatch, tmp_path / "flwr-home", app, message("query"), nc, {})
    assert not marker.exists()
    assert "the job's app bundle carries 'federated/__init__.py'" in _refused(reply, nc)


@pytest.mark.parametrize(
    ("clientapp", "dependencies", "expected"),
    [
        ("coord_client:app", None, "names ClientApp 'coord_client:app': this node runs only federated."),
        ("federated.node:node_config", None, "names ClientApp 'federated.node:node_config'"),
        ("federated.vertical_client:app", ["evil-package==1.0"], "asks for dependencies"),
    ],
)
def test_a_bundle_without_code_naming_anything_but_xgates_apps_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clientapp: str, dependencies: list[str] | None, expected: str
) -> None:
    nc = _node(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(_pyproject(clientapp, dependencies))
    reply = run_node_clientapp(monkeypatch, tmp_path / "flwr-home", app, message("query"), nc, {})
    assert expected in _refused(reply, nc)


def test_positive_control_xgates_own_bundle_loads_xgates_installed_clientapp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The bundle `write_app` builds runs: the answer is xgate's ClientApp refusing a job this node never
    approved (admission runs, so the app that answered is xgate's)."""
    nc = _node(tmp_path)
    job = parse_job(
        {"job_id": "not-approved", "purpose": "fraud-model", "mode": "horizontal", "features": ["tax.income"],
         "label": "tax.label", "label_holder": "tax", "rounds": 1, "secagg": False, "min_nodes": 1}
    )  # fmt: skip
    app = write_app(job, tmp_path / "job", n_nodes=1, max_weight=100, n_features=1)
    run_config = {**job.run_config(tmp_path / "job"), "max-weight": 100, "n-features": 1}
    fit = FitIns(ndarrays_to_parameters([np.zeros(2)]), {"server_round": 1})
    msg = message("train", compat.fitins_to_recorddict(fit, True))
    reply = run_node_clientapp(monkeypatch, tmp_path / "flwr-home", app, msg, nc, run_config)
    assert reply.has_error() and "job not approved" in str(reply.error.reason)
    _nothing_written(tmp_path)  # accepted in memory: not even xgate's own bundle is unpacked


def test_xgates_own_bundle_is_what_the_in_memory_check_accepts(tmp_path: Path) -> None:
    """What Flower's builder makes of `write_app`'s bundle (pyproject.toml, README.md, .info/CONTENT)
    passes `check_fab`, for each of xgate's ClientApps, as the run the SuperLink derives from it."""
    from flwr.cli.build import build_fab_from_disk

    from federated.clientapp_entry import Bundle, check_fab

    for mode, secagg, clientapp in [
        ("horizontal", False, "federated.horizontal_client:app"),
        ("horizontal", True, "federated.horizontal_client:secagg_app"),
        ("vertical", False, "federated.vertical_client:app"),
    ]:
        job = parse_job(
            {"job_id": f"job-{mode}-{int(secagg)}", "purpose": "fraud-model", "mode": mode, "features": ["tax.income"],
             "label": "tax.label", "label_holder": "tax", "rounds": 1, "secagg": secagg, "min_nodes": 2}
        )  # fmt: skip
        fab = build_fab_from_disk(write_app(job, tmp_path / job.job_id, n_nodes=1, max_weight=100, n_features=1))
        with zipfile.ZipFile(io.BytesIO(fab)) as z:
            assert sorted(z.namelist()) == [".info/CONTENT", "README.md", "pyproject.toml"]
        assert check_fab(fab) == Bundle("xgate/xgate-job", "1.0.0", hashlib.sha256(fab).hexdigest(), clientapp)


def test_the_foreign_bundle_is_what_the_review_ran(tmp_path: Path) -> None:
    """The review's bundle (coord_client.py + coord_server.py, clientapp = coord_client:app) is refused."""
    from flwr.cli.build import build_fab_from_disk

    from federated.clientapp_entry import check_fab
    from xgate.errors import PolicyDenied

    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(_pyproject("coord_client:app"))
    (app / "coord_client.py").write_text(FOREIGN)
    (app / "coord_server.py").write_text("")
    with pytest.raises(PolicyDenied, match=r"carries 'coord_client\.py'"):
        check_fab(build_fab_from_disk(app))


# --- review F: Flower unpacked the bundle before any loader ran -------------------------------


def _fab(files: dict[str, bytes]) -> bytes:
    """A FAB laid out as Flower's builder lays it out (the files, then `.info/CONTENT` with their
    hashes), with fields the builder would not let through: Flower's installer takes it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as fab:
        for name, data in files.items():
            fab.writestr(name, data)
        lines = [f"{name},{hashlib.sha256(data).hexdigest()},{len(data) * 8}" for name, data in files.items()]
        fab.writestr(".info/CONTENT", "\n".join(lines))
    return buf.getvalue()


def _run_fab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fab: bytes, node_config: dict[str, str]) -> str:
    """The node's ClientApp process handed exactly `fab`: nothing of it written, and the refusal it
    answers with."""
    monkeypatch.setattr(clientapp_runtime, "build_fab_from_disk", lambda app_dir: fab)
    reply = run_node_clientapp(monkeypatch, tmp_path / "flwr-home", tmp_path, message("query"), node_config, {})
    _nothing_written(tmp_path)
    return _refused(reply, node_config)


def _nothing_written(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    assert not (home / "apps").exists(), sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert not list(tmp_path.glob("planted*")), "the bundle was written outside FLWR_HOME"


def test_a_refused_bundle_is_never_unpacked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Code files, a package and a large file beside an xgate ClientApp's name: refused before
    anything of the bundle reaches the disk (before: all of it sat in $FLWR_HOME/apps, kept)."""
    nc = _node(tmp_path)
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "pyproject.toml").write_text(_pyproject("federated.horizontal_client:app"))
    (app / "README.md").write_text("a job")
    (app / "sitecustomize.py").write_text("print('coordinator code')\n")
    (app / "pkg" / "__init__.py").write_text("x = 1\n")
    (app / "pkg" / "big.bin").write_bytes(b"\0" * (512 << 10))
    reply = run_node_clientapp(monkeypatch, tmp_path / "flwr-home", app, message("query"), nc, {})
    _nothing_written(tmp_path)
    reason = _refused(reply, nc)
    assert reason.startswith("policy_denied: the job's app bundle carries 'pkg/__init__.py'"), reason


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("version", "1.0.0/../../../planted", "[project] version '1.0.0/../../../planted'"),
        ("version", "..", "[project] version '..'"),
        ("version", "1.0.0\\..\\planted", "[project] version"),
        ("name", "../../../planted", "[project] name '../../../planted'"),
        ("publisher", "xgate/../../planted", "publisher 'xgate/../../planted'"),
    ],
)
def test_a_bundles_names_never_make_a_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str, value: str, shown: str
) -> None:
    """Flower builds the install path from publisher, name and version unchecked (before: version
    `1.0.0/../../../planted` wrote the bundle beside FLWR_HOME): a node takes plain names only."""
    nc = _node(tmp_path)
    fab = _fab({"pyproject.toml": _pyproject("federated.horizontal_client:app", None, **{field: value}).encode()})
    reason = _run_fab(monkeypatch, tmp_path, fab, nc)
    assert reason.startswith(f"policy_denied: the job's app bundle has {shown}"), reason


def test_an_oversized_bundle_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Over FAB_MAX_BYTES as shipped (Flower's builder stores files unpacked: 2 MiB of README)."""
    nc = _node(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(_pyproject("federated.horizontal_client:app"))
    (app / "README.md").write_bytes(np.random.default_rng(0).bytes(2 << 20))
    reply = run_node_clientapp(monkeypatch, tmp_path / "flwr-home", app, message("query"), nc, {})
    _nothing_written(tmp_path)
    reason = _refused(reply, nc)
    assert reason.startswith("policy_denied: the job's app bundle is 20"), reason
    assert "bytes, over this node's 1048576" in reason, reason


def test_a_bundle_that_unpacks_oversized_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A few KiB shipped, 8 MiB unpacked (deflated zeros): refused from the entries' sizes, unread."""
    fab = _fab({"pyproject.toml": _pyproject("federated.horizontal_client:app").encode(), "README.md": bytes(8 << 20)})
    assert len(fab) < 64 << 10
    reason = _run_fab(monkeypatch, tmp_path, fab, _node(tmp_path))
    assert reason.startswith("policy_denied: the job's app bundle unpacks to over this node's 1048576 bytes"), reason


def _entry(name: str, data: bytes, mode: int) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info, data


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("not a zip", "is not a readable FAB"),
        ("no manifest", "lacks .info/CONTENT or pyproject.toml"),
        ("manifest hash", "does not match its .info/CONTENT"),
        ("unlisted README", "does not match its .info/CONTENT"),
        ("symlink README", "carries 'README.md'"),
        ("directory", "carries 'README.md/'"),
        ("duplicate", "carries an entry twice"),
    ],
)
def test_a_malformed_fab_is_refused_in_memory(damage: str, expected: str) -> None:
    from federated.clientapp_entry import check_fab
    from xgate.errors import PolicyDenied

    pyproject = _pyproject("federated.horizontal_client:app").encode()
    good = _fab({"pyproject.toml": pyproject})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as fab:
        fab.writestr("pyproject.toml", pyproject)
        manifest = f"pyproject.toml,{hashlib.sha256(pyproject).hexdigest()},0"
        if damage == "manifest hash":
            manifest = f"pyproject.toml,{'0' * 64},0"
        elif damage == "unlisted README":
            fab.writestr("README.md", b"hi")
        elif damage == "symlink README":
            fab.writestr(*_entry("README.md", b"/etc/passwd", 0o120777))
        elif damage == "directory":
            fab.writestr(*_entry("README.md/", b"", 0o040755))
        elif damage == "duplicate":
            with pytest.warns(UserWarning):
                fab.writestr("pyproject.toml", pyproject)
        if damage != "no manifest":
            fab.writestr(".info/CONTENT", manifest)
    content = good[:-30] if damage == "not a zip" else buf.getvalue()
    with pytest.raises(PolicyDenied, match=re.escape(expected)):
        check_fab(content)


def test_the_run_must_be_the_bundle_it_shipped() -> None:
    """The loader answers only for the FAB this process checked, under the id and version it declares."""
    from federated import clientapp_entry as entry
    from federated.guarded_app import RefusedClientApp

    fab = _fab({"pyproject.toml": _pyproject("federated.horizontal_client:app").encode()})
    fab_hash = hashlib.sha256(fab).hexdigest()
    assert entry._install_from_fab(fab, skip_prompt=True) == Path(os.devnull)
    assert not isinstance(entry.load_client_app("xgate/xgate-job", "1.0.0", fab_hash), RefusedClientApp)
    for fab_id, version, digest in [
        ("xgate/other", "1.0.0", fab_hash),
        ("xgate/xgate-job", "2.0.0", fab_hash),
        ("xgate/xgate-job", "1.0.0", "0" * 64),
    ]:
        assert isinstance(entry.load_client_app(fab_id, version, digest), RefusedClientApp)
    assert entry._project_dir("a/b/c", "1.0.0", fab_hash) == Path(os.devnull)  # refused by the loader
