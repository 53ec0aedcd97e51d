"""A stacked vertical job (`vertical_scheme = "stacked"`) over the vertical ServerApp and the nodes'
real ClientApp handlers (tests/clientapp_relay.py): one exchange of sealed training labels and
held-out scores instead of split learning's steps; each feature node's part trained with DP-SGD
and charged to its ledger before anything leaves; the attacks a coordinator can try on it (a part
fitted twice, labels swapped between nodes, a replayed label release) refused."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federated import vertical_client as client
from federated import vertical_server as server
from federated.admission import dp_release
from federated.jobs import parse_job
from tests.clientapp_relay import LABEL, NodeIds, federation, handler_exchange
from xgate.errors import CryptoError, InvalidInput

EVERYONE = [f"pseudonym{i:05d}" for i in range(1500)]
SETS = {"civil": EVERYONE[:1300], "tax": EVERYONE[200:], "hrss": EVERYONE[100:1400]}


class _Recorder:
    """The message types the coordinator sent, and (optionally) a reply edit."""

    def __init__(self, edit: Any = None) -> None:
        self.sent: list[str] = []
        self.requests: dict[tuple[str, str], Message] = {}
        self.edit = edit

    def __call__(self, message_type: str, agency: str, request: Message, reply: Message) -> Message:
        self.sent.append(message_type)
        self.requests[(message_type, agency)] = request
        return reply if self.edit is None else self.edit(message_type, agency, request, reply)


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: _Recorder, *, dp: bool = True) -> dict[str, Any]:
    fed = federation(tmp_path, SETS, dp=dp, top_calibration=0.5, scheme="stacked")
    monkeypatch.setattr(server, "exchange", handler_exchange(fed.relay, recorder))
    job_dir = tmp_path / "server"
    job_dir.mkdir()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = fed.relay.run_id, 0, 1
    context = Context(1, 0, {}, RecordDict(), {"nodes": 3})
    server.run_vertical(NodeIds(sorted(fed.relay.configs)), context, fed.relay.job, job_dir)  # type: ignore[arg-type]
    summary: dict[str, Any] = json.loads((job_dir / "server-summary.json").read_text())
    summary["_relay"] = fed.relay
    return summary


def test_a_stacked_job_trains_in_one_exchange_and_charges_each_part_before_it_is_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder()
    summary = _run(tmp_path, monkeypatch, recorder)
    training = [t for t in recorder.sent if t.startswith(("train.setup", "train.step", "train.top", "train.labels"))]
    assert "train.step" not in training and "train.top" not in training  # no split-learning step ran
    assert recorder.sent.count("train.labels") == 1 and recorder.sent.count("train.fit") == 2
    assert recorder.sent.index("train.labels") < recorder.sent.index("train.fit") < recorder.sent.index("evaluate.top")
    evaluation = summary["evaluation"]
    assert evaluation["top_calibrated"] is True and evaluation["calibration_rows"] > 0
    assert evaluation["n"] + evaluation["calibration_rows"] == evaluation["held_out_rows"]
    assert 0.0 <= evaluation["auc"] <= 1.0 and len(summary["curve"]) == 1
    # Each feature node's own accountant (DP-SGD over its aligned training rows) is in the summary,
    # and its ledger holds the charge; the label holder's part never leaves it, so it charges nothing.
    assert set(summary["dp"]["nodes"]) == {"tax", "hrss"}
    relay = summary["_relay"]
    for nc in relay.configs.values():
        recorded = dp_release(nc.ledger, relay.job.job_id)
        if nc.agency == LABEL:
            assert recorded is None
            continue
        node = summary["dp"]["nodes"][nc.agency]
        assert 3.9 < node["dp_epsilon"] <= 4.0 and node["dp_sample_rate"] < 1.0
        assert recorded is not None and recorded["epsilon"] == node["dp_epsilon"]
        assert recorded["steps"] == node["dp_steps"] == 5 * math.ceil(1 / node["dp_sample_rate"])  # 5 epochs


def test_a_coordinator_cannot_have_a_part_fitted_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second DP-SGD run on the same rows would release a second noisy model the ledger never counted."""
    recorder = _Recorder()
    summary = _run(tmp_path, monkeypatch, recorder)
    relay = summary["_relay"]
    node = next(n for n, nc in relay.configs.items() if nc.agency == "tax")
    context = Context(
        relay.run_id, node, _node_config(relay, node), RecordDict(), relay.job.run_config(relay.root / "job")
    )
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = relay.run_id, node, 1
    with pytest.raises(InvalidInput, match="already answered 'fit' in this run"):
        client.fit(recorder.requests[("train.fit", "tax")], context)


def test_a_coordinator_swapping_two_nodes_sealed_labels_fails_the_job_naming_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The labels are sealed to each feature node and bound to it: relayed to another node, they do not open."""

    def swap(message_type: str, _agency: str, request: Message, reply: Message) -> Message:
        if message_type != "train.labels":
            return reply
        arrays = reply.content.array_records["arrays"]
        arrays["tax"], arrays["hrss"] = arrays["hrss"], arrays["tax"]
        return reply

    # Over Flower the node's reply carries the error and the ServerApp fails the job naming it
    # (federated/guarded_app.py); here the handler's own exception surfaces.
    with pytest.raises(CryptoError, match=r"the labels of step 0 for '(tax|hrss)' does not open"):
        _run(tmp_path, monkeypatch, _Recorder(swap))


def test_the_relayed_labels_are_ciphertext(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the coordinator relays is not the labels: it does not decode as them, and the same
    labels sealed for two nodes differ."""
    seen: dict[str, np.ndarray] = {}

    def keep(message_type: str, _agency: str, request: Message, reply: Message) -> Message:
        if message_type == "train.labels":
            seen.update({k: v.numpy() for k, v in reply.content.array_records["arrays"].items()})
        return reply

    _run(tmp_path, monkeypatch, _Recorder(keep))
    assert set(seen) == {"tax", "hrss"}
    assert seen["tax"].tobytes() != seen["hrss"].tobytes()
    for sealed in seen.values():
        raw = sealed.tobytes()
        assert raw.count(b"\x00\x3c") < len(raw) // 8  # float16 1.0 would fill half the plaintext


def test_the_label_holder_refuses_a_second_label_release_and_a_split_job_sends_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder()
    summary = _run(tmp_path, monkeypatch, recorder)
    relay = summary["_relay"]
    node = next(n for n, nc in relay.configs.items() if nc.agency == LABEL)
    run_config = relay.job.run_config(relay.root / "job")
    context = Context(relay.run_id, node, _node_config(relay, node), RecordDict(), run_config)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = relay.run_id, node, 1
    with pytest.raises(InvalidInput, match="already answered 'labels'"):
        client.labels(recorder.requests[("train.labels", LABEL)], context)
    # A split job (its definition approved or not: nodes refuse an unapproved one first) sends none.
    split = parse_job({**relay.job.model_dump(mode="json"), "vertical_scheme": "split", "rounds": 1})
    cache = relay.configs[node].ledger.parent / "fl-cache" / relay.job.job_id
    with pytest.raises(ValueError, match="only a stacked job sends its training labels"):
        client._labels(recorder.requests[("train.labels", LABEL)], context, split, relay.configs[node], cache)


def _node_config(relay: Any, node: int) -> dict[str, str]:
    from tests.clientapp_relay import _node_config as config

    return config(relay.configs[node])


_STACKED = {
    "job_id": "stacked-1", "purpose": "fraud-model", "mode": "vertical", "features": ["tax.income"],
    "label": "civil.label", "label_holder": "civil", "rounds": 1, "vertical_scheme": "stacked",
    "top_calibration": 0.5,
}  # fmt: skip


def test_a_stacked_job_takes_its_parts_training_defaults_and_digests_them() -> None:
    job = parse_job({**_STACKED, "dp": {"epsilon": 4, "unit": "record"}})
    assert (job.batch_size, job.learning_rate, job.local_epochs) == (512, 4.0, 5)
    assert job.dp is not None and job.dp.clip == 2.0 and job.part_width() == 1
    explicit = parse_job({**_STACKED, "batch_size": 512, "learning_rate": 4.0, "local_epochs": 5,
                          "dp": {"epsilon": 4, "delta": 1e-6, "clip": 2.0, "unit": "record"}})  # fmt: skip
    assert job.digest() == explicit.digest()
    split = parse_job({**_STACKED, "vertical_scheme": "split", "dp": {"epsilon": 4, "unit": "record"}})
    assert split.digest() != job.digest()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"rounds": 3}, "a stacked job trains its parts in one exchange: rounds = 1, not 3"),
        ({"top_calibration": None}, "a stacked job fits its top over the parts' scores on held-out rows"),
        ({"mode": "horizontal"}, "vertical_scheme applies to vertical jobs"),
        ({"vertical_scheme": "ensemble"}, "vertical_scheme: Input should be 'split' or 'stacked'"),
    ],
)
def test_a_stacked_job_that_cannot_run_is_refused_saying_why(change: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(says)):
        parse_job({**_STACKED, **change})


def test_a_split_job_digests_as_before_the_scheme_existed() -> None:
    """Recorded decisions and signatures over split jobs stay valid."""
    split = parse_job({**_STACKED, "vertical_scheme": "split", "top_calibration": None})
    unnamed = parse_job({k: v for k, v in _STACKED.items() if k not in ("vertical_scheme", "top_calibration")})
    assert split.digest() == unnamed.digest()
