"""What a ClientApp failure tells the coordinator (review C: Flower forwarded `str(exception)` as the
reply's error reason, e.g. "the holdout file /abs/path holds out none of the 250 subjects").

Each message goes through the node's real ClientApp process entry (tests/clientapp_runtime.py),
with the bundle `federated.job_run.write_app` builds, into xgate's real ClientApps; a handler's
dependency is made to fail. Only an XgateError's code and public message cross; anything else is
"internal error at <agency>", and the node logs the whole story locally as structured JSON
(federated/guarded_app.py, xgate/logging.py configured by federated/clientapp_entry.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from federated import node, vertical_client
from federated.job_run import write_app
from federated.jobs import JobSpec, parse_job
from tests.clientapp_runtime import message, run_node_clientapp
from xgate.errors import InvalidInput

LEAK = "the holdout file /srv/xgate/tax/holdout.txt holds out none of the 250 subjects"
NODE_CONFIG = {"store": "/srv/xgate/tax/store.sqlite", "agency": "tax", "ledger": "/srv/xgate/tax/ledger.sqlite"}


@pytest.fixture(autouse=True)
def fresh_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ClientApp entry configures structlog for its process: undone after each test, and the
    guarded app's logger rebuilt so it writes where this test captures."""
    from federated import guarded_app

    monkeypatch.setattr(guarded_app, "log", structlog.get_logger("federated.guarded_app"))
    yield
    structlog.reset_defaults()


def _job(mode: str) -> JobSpec:
    features = ["tax.income"] if mode == "horizontal" else ["civil.age"]
    return parse_job(
        {"job_id": f"err-{mode}", "purpose": "fraud-model", "mode": mode, "features": features,
         "label": "tax.label", "label_holder": "tax", "rounds": 1, "secagg": False, "min_nodes": 1}
    )  # fmt: skip


def _ask(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str) -> Any:
    job = _job(mode)
    app = write_app(job, tmp_path / "job", n_nodes=1, max_weight=100, n_features=1)
    run_config = {**job.run_config(tmp_path / "job"), "max-weight": 100, "n-features": 1}
    if mode == "horizontal":
        msg = message("train", compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([np.zeros(2)]), {}), True))
    else:
        msg = message("query.hello")
    return run_node_clientapp(monkeypatch, tmp_path / "flwr-home", app, msg, NODE_CONFIG, run_config)


def _fail_with(monkeypatch: pytest.MonkeyPatch, mode: str, exc: Exception) -> None:
    def boom(*_: Any, **__: Any) -> Any:
        raise exc

    if mode == "horizontal":
        monkeypatch.setattr(node, "node_config", boom)  # read by client_fn for every message
    else:
        monkeypatch.setattr(vertical_client, "_setup", boom)  # every vertical handler starts there


@pytest.mark.parametrize("mode", ["horizontal", "vertical"])
def test_a_handler_failing_with_a_path_and_a_count_tells_the_coordinator_neither(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    _fail_with(monkeypatch, mode, OSError(LEAK))
    reply = _ask(monkeypatch, tmp_path, mode)
    assert reply.has_error() and not reply.has_content()
    reason = str(reply.error.reason)
    assert reason == "internal_error: internal error at tax", reason
    assert "/srv" not in reason and "250" not in reason
    # the node keeps the whole story, as one structured line of its own log
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    (failed,) = [line for line in lines if line.get("event") == "clientapp_failed"]
    assert failed["component"] == "clientapp" and failed["agency"] == "tax" and failed["error_type"] == "OSError"
    assert LEAK in failed["exception"]


@pytest.mark.parametrize("mode", ["horizontal", "vertical"])
def test_an_xgate_error_crosses_as_its_code_and_public_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str
) -> None:
    _fail_with(monkeypatch, mode, InvalidInput("the job names no element this node holds"))
    reply = _ask(monkeypatch, tmp_path, mode)
    assert reply.error.reason == "invalid_input: the job names no element this node holds"


def test_the_agency_named_is_the_nodes_own_and_only_a_plain_name() -> None:
    from flwr.app import Context, RecordDict

    from federated.guarded_app import node_agency, public_reason

    assert node_agency(Context(1, 1, {"agency": "tax"}, RecordDict(), {})) == "tax"
    assert node_agency(Context(1, 1, {"agency": "/srv/x y"}, RecordDict(), {})) == "this node"
    assert public_reason(KeyError("/srv/secret"), "tax") == "internal_error: internal error at tax"
