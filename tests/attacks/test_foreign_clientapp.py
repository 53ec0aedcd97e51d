"""A coordinator ships its own ClientApp in the job's app bundle (FAB) and names it in
`[tool.flwr.app.components] clientapp`: Flower's `flwr-clientapp` at every node imports it from
the bundle's directory and runs it next to the node's store (review: /tmp/review-b/fab/run_fab.py
read raw rows and the node config's key paths). A node runs xgate's installed ClientApps only
(federated/clientapp_entry.py): the foreign app never runs, the coordinator is told why, and
nothing of the node is in that answer.

Each message goes through the node's real ClientApp process entry (tests/clientapp_runtime.py:
Flower's `run_clientapp` with its FAB installation and loading; only the transport is replaced).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomli_w
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from federated import datasets
from federated.job_run import write_app
from federated.jobs import parse_job
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


def _pyproject(clientapp: str, dependencies: list[str] | None = None) -> str:
    return tomli_w.dumps(
        {
            "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
            "project": {
                "name": "xgate-job",
                "version": "1.0.0",
                "description": "not xgate's code",
                "license": "Apache-2.0",
                "dependencies": dependencies or [],
            },
            "tool": {
                "flwr": {
                    "app": {
                        "publisher": "xgate",
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
    assert "the job's app bundle carries 'federated'" in _refused(reply, nc)


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


def test_the_foreign_bundle_is_what_the_review_ran(tmp_path: Path) -> None:
    """The review's bundle (coord_client.py + coord_server.py, clientapp = coord_client:app) is refused."""
    from federated.clientapp_entry import check_bundle
    from xgate.errors import PolicyDenied

    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(_pyproject("coord_client:app"))
    (app / "coord_client.py").write_text(FOREIGN)
    (app / "coord_server.py").write_text("")
    with pytest.raises(PolicyDenied, match=r"carries 'coord_client\.py'"):
        check_bundle(app)
