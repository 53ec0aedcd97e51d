"""A SecAgg+ round that cannot be unmasked fails the job, naming the nodes that dropped out
(federated/horizontal_server.py `RecordedSecAggPlus`). Found by review: after a node was killed,
rounds 2 and 3 were recorded as "NOT unmasked" and the job still completed, its model round 1's.
Flower's stages are replaced by stubs that report what its state would say after a drop."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key

from federated.horizontal_server import RecordedSecAggPlus
from xgate.errors import JobFailed


def _workflow(events: list[dict[str, Any]]) -> RecordedSecAggPlus:
    return RecordedSecAggPlus(events.append, "job-1", num_shares=1.0, reconstruction_threshold=0.66, timeout=5.0)


def _context(server_round: int) -> Any:
    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: server_round})})
    return SimpleNamespace(state=state)


def _state(sampled: list[int], active: list[int]) -> Any:
    return SimpleNamespace(sampled_node_ids=set(sampled), active_node_ids=set(active), num_shares=3, threshold=2)


def test_an_aggregate_that_could_not_be_unmasked_fails_the_job_naming_who_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[dict[str, Any]] = []
    flow, state = _workflow(events), _state([11, 12, 13], [11, 12, 13])
    monkeypatch.setattr(
        SecAggPlusWorkflow, "collect_masked_vectors_stage", lambda *a: state.active_node_ids.discard(13) or True
    )
    monkeypatch.setattr(SecAggPlusWorkflow, "unmask_stage", lambda *a: state.active_node_ids.clear() or False)
    assert flow.collect_masked_vectors_stage(None, _context(2), state)  # type: ignore[arg-type]
    with pytest.raises(JobFailed, match="training round 2: secure aggregation could not complete \\(unmask\\)"):
        flow.unmask_stage(None, _context(2), state)  # type: ignore[arg-type]
    kinds = [e["event"] for e in events]
    assert kinds == ["secagg_round", "node_dropped", "job_failed"]
    assert events[1]["node_id"] == 13 and events[1]["round"] == 2
    assert events[0]["unmasked"] is False and events[0]["masked_vectors"] == 2


def test_a_halted_stage_fails_the_job_too(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[dict[str, Any]] = []
    flow, state = _workflow(events), _state([11, 12, 13], [11])
    monkeypatch.setattr(SecAggPlusWorkflow, "share_keys_stage", lambda *a: False)
    with pytest.raises(JobFailed, match="2 of 3 nodes dropped out"):
        flow.share_keys_stage(None, _context(3), state)  # type: ignore[arg-type]
    assert [e["node_id"] for e in events if e["event"] == "node_dropped"] == [12, 13]


def test_an_unmasked_round_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[dict[str, Any]] = []
    flow, state = _workflow(events), _state([11, 12, 13], [11, 12])
    monkeypatch.setattr(SecAggPlusWorkflow, "collect_masked_vectors_stage", lambda *a: True)
    monkeypatch.setattr(SecAggPlusWorkflow, "unmask_stage", lambda *a: True)
    assert flow.collect_masked_vectors_stage(None, _context(1), state)  # type: ignore[arg-type]
    assert flow.unmask_stage(None, _context(1), state)  # type: ignore[arg-type]
    assert [e["event"] for e in events] == ["secagg_round"] and events[0]["unmasked"] is True
