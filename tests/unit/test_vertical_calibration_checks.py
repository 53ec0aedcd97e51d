"""`top_calibration` over the vertical ServerApp and the nodes' real ClientApp handlers
(tests/clientapp_relay.py): the label holder fits its top on the calibration rows only and counts
only the others, keeps the top it scored with, and the coordinator refuses an evaluation whose
counts or calibration flags do not fit the job."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federated import top_calibration
from federated import vertical_server as server
from tests.clientapp_relay import LABEL, NodeIds, federation, handler_exchange
from xgate.errors import VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(1500)]
SETS = {"civil": EVERYONE[:1300], "tax": EVERYONE[200:], "hrss": EVERYONE[100:1400]}
Tamper = Callable[[dict[str, Any]], dict[str, Any]]


def _with_cfg(reply: Message, request: Message, cfg: dict[str, Any]) -> Message:
    record = RecordDict({"cfg": ConfigRecord(cfg)})
    if "arrays" in reply.content.array_records:
        record["arrays"] = reply.content.array_records["arrays"]
    return Message(record, reply_to=request)


def _run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calibration: float | None, tamper: Tamper | None = None
) -> tuple[dict[str, Any], Path]:
    """The job end to end; returns the coordinator's evaluation and the label holder's cache."""
    fed = federation(tmp_path, SETS, dp=True, top_calibration=calibration)
    relay = fed.relay

    def edit(message_type: str, _agency: str, request: Message, reply: Message) -> Message:
        if message_type == "evaluate.top" and tamper is not None:
            return _with_cfg(reply, request, tamper(dict(reply.content["cfg"])))
        return reply

    exchange = handler_exchange(relay, edit)
    monkeypatch.setattr(server, "exchange", exchange)
    job_dir = tmp_path / "server"
    job_dir.mkdir()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = relay.run_id, 0, 1
    context = Context(1, 0, {}, RecordDict(), {"nodes": 3})
    server.run_vertical(NodeIds(sorted(relay.configs)), context, relay.job, job_dir)  # type: ignore[arg-type]
    evaluation = json.loads((job_dir / "server-summary.json").read_text())["evaluation"]
    label_node = next(n for n, nc in relay.configs.items() if nc.agency == LABEL)
    cache = relay.configs[label_node].ledger.parent / "fl-cache" / relay.job.job_id
    return evaluation, cache


def test_the_top_is_fitted_on_the_calibration_rows_only_and_they_are_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted_on: list[int] = []
    real = top_calibration.calibrated_top

    def spy(e: np.ndarray, y: np.ndarray, l2: float, h: int) -> np.ndarray:
        fitted_on.append(len(e))
        return real(e, y, l2, h)

    monkeypatch.setattr(top_calibration, "calibrated_top", spy)
    evaluation, cache = _run(tmp_path, monkeypatch, 0.5)
    assert evaluation["top_calibrated"] is True and evaluation["calibration_rows"] > 0
    assert fitted_on == [evaluation["calibration_rows"]]  # fitted once, on those rows alone
    assert evaluation["n"] + evaluation["calibration_rows"] == evaluation["held_out_rows"]
    with np.load(cache / "data.npy.npz") as data:
        marked = data["calibration"]
    assert int(marked.sum()) == evaluation["calibration_rows"]  # the rows setup marked by pseudonym
    with np.load(cache / "params.npz") as params:
        kept = params["scored_top"]
    summary = json.loads((tmp_path / "server" / "server-summary.json").read_text())
    # The label holder keeps the top the evaluation scored with; the model's digest names it.
    assert summary["model_parts"][f"top@{LABEL}"] == hashlib.sha256(kept.tobytes()).hexdigest()


def test_a_job_without_the_option_keeps_the_deattenuated_top(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluation, _ = _run(tmp_path, monkeypatch, None)
    assert evaluation["top_calibrated"] is False and evaluation["calibration_rows"] == 0
    assert evaluation["top_deattenuated"] is True and evaluation["n"] == evaluation["held_out_rows"]


@pytest.mark.parametrize(
    ("calibration", "tamper", "why"),
    [
        (0.5, lambda c: {**c, "calibration_rows": c["calibration_rows"] + 1}, "held-out rows"),
        (0.5, lambda c: {**c, "tp": c["tp"] + c["calibration_rows"]}, "held-out rows"),  # calibration rows counted too
        (0.5, lambda c: {**c, "top_calibrated": False}, "top_calibrated=False"),
        (0.5, lambda c: {**c, "top_calibrated": "yes"}, "top_calibrated"),
        (None, lambda c: {**c, "top_calibrated": True, "calibration_rows": 5, "tp": max(0, c["tp"] - 5)}, "calibrat"),
    ],
)
def test_an_evaluation_that_does_not_fit_the_job_fails_naming_the_label_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calibration: float | None, tamper: Tamper, why: str
) -> None:
    with pytest.raises(VerticalFailed) as failed:
        _run(tmp_path, monkeypatch, calibration, tamper)
    assert failed.value.agency == LABEL and why in failed.value.message
