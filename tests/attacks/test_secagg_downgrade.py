"""A job approved with `secagg = true` answered in the clear, or under a SecAgg+ configuration the
coordinator weakened (review: /tmp/review-b/secagg_bypass.py).

* The coordinator names xgate's plain ClientApp for a SecAgg+ job: before, the node sent its exact
  moment vector and update; now the plain app refuses jobs approved with SecAgg+, and the SecAgg+
  app refuses jobs approved without it (federated/secagg_guard.py `require_transport`).
* The coordinator sends a SecAgg+ setup with a low reconstruction threshold (2 of 6 shares: two
  colluders unmask any one update), fewer shares than the job's `min_nodes`, or an unmask request
  listing a node both active and dead (both secrets of its mask): Flower's `secaggplus_mod` took
  all of it; the node now refuses, and records what it ran with (`secagg.jsonl` in the run's
  directory), from its own state, per round.

Real Flower messages through xgate's real ClientApps (`federated.horizontal_client.app` /
`secagg_app`) and Flower's own `secaggplus_mod`, three nodes with their own stores and ledgers;
the coordinator's side of SecAgg+ is relayed here as `SecAggPlusWorkflow` builds its messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from federated import datasets, pooled_stats
from federated.admission import LedgerAdmission
from federated.horizontal_client import app, secagg_app
from federated.jobs import JobSpec, parse_job
from federated.secagg_guard import EVIDENCE

NIDS = (11, 12, 13)
RUN_ID = 5


def _job(secagg: bool, min_nodes: int = 3, standardise: bool = False) -> JobSpec:
    return parse_job(
        {"job_id": f"sa-{'on' if secagg else 'off'}-{int(standardise)}", "purpose": "fraud-model",
         "mode": "horizontal", "features": ["civil.age"], "label": "tax.label", "label_holder": "tax",
         "rounds": 2, "secagg": secagg, "min_nodes": min_nodes,
         "encodings": {"civil.age": "standardise" if standardise else "minmax"}}
    )  # fmt: skip


class Node:
    def __init__(self, root: Path, nid: int, job: JobSpec) -> None:
        rng = np.random.default_rng(nid)
        age = rng.integers(18, 90, 300)
        self.store, self.ledger = root / f"n{nid}" / "store.sqlite", root / f"n{nid}" / "ledger.sqlite"
        datasets.write_store(self.store, "synth", [f"p{nid}-{i}" for i in range(300)], {
            "civil.age": datasets.Column(age, "int", 0, 120),
            "tax.label": datasets.Column((age > 55).astype(int), "flag", 0, 1),
        })  # fmt: skip
        admission = LedgerAdmission(self.ledger, self.store)
        admission.configure(["fraud-model"], {"synth": 10.0})
        assert admission(job, f"r{nid}").approved
        node_config: dict[str, Any] = {"store": str(self.store), "agency": f"r{nid}", "ledger": str(self.ledger)}
        run_config = {**job.run_config(root), "max-weight": 1000, "n-features": 1}
        self.nid, self.job = nid, job
        self.context = Context(RUN_ID, nid, node_config, RecordDict(), run_config)  # kept across stages, as Flower

    def ask(self, which: Any, content: RecordDict) -> Message:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, self.nid, 1
        msg = Message(content=content, dst_node_id=self.nid, message_type=MessageType.TRAIN, group_id="1")
        return which(msg, self.context)  # type: ignore[no-any-return]

    def evidence(self) -> list[dict[str, Any]]:
        path = self.ledger.parent / "fl-cache" / self.job.job_id / f"run-{RUN_ID}" / EVIDENCE
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _fit(config: dict[str, Any], width: int = 2) -> RecordDict:
    return compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([np.zeros(width)]), config), True)


def _collect(sources: list[int], ciphertexts: list[bytes]) -> RecordDict:
    """A collect-masked-vectors message: the node's fit round with the shares forwarded to it."""
    content = _fit({"server_round": 1})
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(
        {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: sources}
    )
    return content


def _stage(stage: str, **cfg: Any) -> RecordDict:
    return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **cfg})})


def _setup(shares: int, threshold: int, sampled: int | None = None) -> RecordDict:
    return _stage(Stage.SETUP, **{Key.SAMPLE_NUMBER: sampled or shares, Key.SHARE_NUMBER: shares,
                                  Key.THRESHOLD: threshold, Key.CLIPPING_RANGE: 1.0, Key.TARGET_RANGE: 1 << 20,
                                  Key.MOD_RANGE: 1 << 32, Key.MAX_WEIGHT: 1000.0})  # fmt: skip


def _error(reply: Message) -> str:
    assert reply.has_error(), "the node answered"
    return str(reply.error.reason)


# -- the plain app and the SecAgg+ app each serve only the jobs approved for them --------------


def test_the_plain_clientapp_refuses_a_job_approved_with_secagg(tmp_path: Path) -> None:
    node = Node(tmp_path, 11, _job(secagg=True, standardise=True))
    stats = node.ask(app, _fit({pooled_stats.PHASE_KEY: pooled_stats.STATISTICS_PHASE}, width=3))
    assert "approved with secagg = true" in _error(stats) and not stats.has_content()
    fit = node.ask(app, _fit({"server_round": 1}))
    assert "approved with secagg = true" in _error(fit) and not fit.has_content()
    assert not (node.ledger.parent / "fl-cache").exists()  # nothing released, nothing claimed


def test_positive_control_the_plain_clientapp_answers_a_plain_job_in_the_clear(tmp_path: Path) -> None:
    node = Node(tmp_path, 11, _job(secagg=False))
    reply = node.ask(app, _fit({"server_round": 1}))
    assert not reply.has_error()
    res = compat.recorddict_to_fitres(reply.content, False)
    assert res.num_examples > 0 and parameters_to_ndarrays(res.parameters)[0].shape == (2,)


def test_the_secagg_clientapp_refuses_a_job_approved_without_it(tmp_path: Path) -> None:
    node = Node(tmp_path, 11, _job(secagg=False))
    assert "approved with secagg = false" in _error(node.ask(secagg_app, _setup(3, 2)))


# -- the SecAgg+ configuration is the job's, checked at the node --------------------------------


@pytest.mark.parametrize(
    ("shares", "threshold", "expected"),
    [
        (6, 2, "reconstruction threshold 2 of 6 shares; this node requires 4..6"),
        (5, 3, "reconstruction threshold 3 of 5 shares; this node requires 4..5"),
        (2, 2, "secrets split into 2 shares, job 'sa-on-0' needs at least min_nodes = 3"),
        (3, 4, "reconstruction threshold 4 of 3 shares"),
    ],
)
def test_a_weakened_secagg_setup_is_refused(tmp_path: Path, shares: int, threshold: int, expected: str) -> None:
    node = Node(tmp_path, 11, _job(secagg=True))
    reply = node.ask(secagg_app, _setup(shares, threshold))
    assert expected in _error(reply)
    assert not reply.has_content()  # no public keys: the protocol does not start


def test_positive_control_a_two_thirds_setup_is_accepted(tmp_path: Path) -> None:
    node = Node(tmp_path, 11, _job(secagg=True))
    reply = node.ask(secagg_app, _setup(6, 4))
    assert not reply.has_error()
    assert set(reply.content.config_records[RECORD_KEY_CONFIGS]) == {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2}


def _round(nodes: list[Node], dead_and_active: int | None = None) -> dict[int, Message]:
    """One SecAgg+ round as Flower's SecAggPlusWorkflow relays it (3 shares, threshold 2: 2/3).
    `dead_and_active`: a node the coordinator lists both active and dead at unmask."""
    keys = {n.nid: n.ask(secagg_app, _setup(len(nodes), 2)).content.config_records[RECORD_KEY_CONFIGS] for n in nodes}
    public = {str(nid): [cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]] for nid, cfg in keys.items()}
    fwd: dict[int, tuple[list[int], list[bytes]]] = {n.nid: ([], []) for n in nodes}
    for n in nodes:
        res = n.ask(secagg_app, _stage(Stage.SHARE_KEYS, **public)).content.config_records[RECORD_KEY_CONFIGS]
        dsts, ciphertexts = cast(list[int], res[Key.DESTINATION_LIST]), cast(list[bytes], res[Key.CIPHERTEXT_LIST])
        for dst, ciphertext in zip(dsts, ciphertexts, strict=True):
            fwd[dst][0].append(n.nid)
            fwd[dst][1].append(ciphertext)
    for n in nodes:
        masked = n.ask(secagg_app, _collect(*fwd[n.nid]))
        assert not masked.has_error(), masked.error.reason
    dead = [dead_and_active] if dead_and_active is not None else []
    unmask = {Key.ACTIVE_NODE_ID_LIST: list(NIDS), Key.DEAD_NODE_ID_LIST: dead}
    return {n.nid: n.ask(secagg_app, _stage(Stage.UNMASK, **unmask)) for n in nodes}


def test_unmask_listing_a_node_both_active_and_dead_is_refused(tmp_path: Path) -> None:
    job = _job(secagg=True)
    nodes = [Node(tmp_path, nid, job) for nid in NIDS]
    replies = _round(nodes, dead_and_active=13)
    for reply in replies.values():
        assert "listed both active and dead" in _error(reply)


def test_positive_control_an_honest_round_unmasks_and_each_node_records_what_it_ran_with(tmp_path: Path) -> None:
    job = _job(secagg=True)
    nodes = [Node(tmp_path, nid, job) for nid in NIDS]
    replies = _round(nodes)
    for reply in replies.values():
        assert not reply.has_error()
        assert sorted(reply.content.config_records[RECORD_KEY_CONFIGS][Key.NODE_ID_LIST]) == list(NIDS)  # type: ignore[arg-type]
    for n in nodes:  # the node's own record, from its own state, not the coordinator's events
        collect, unmask = n.evidence()
        assert collect["stage"] == Stage.COLLECT_MASKED_VECTORS and collect["secagg_round"] == 1
        ran = (collect["share_num"], collect["threshold"], collect["sample_num"], collect["neighbours"])
        assert ran == (3, 2, 3, 3)
        assert collect["authenticated"] is False and len(collect["neighbour_keys"]) == 2  # no CA: listing only
        assert collect["round"] == 1 and collect["phase"] == "training" and collect["job_id"] == job.job_id
        assert (unmask["stage"], unmask["active"], unmask["dead"], unmask["threshold"]) == (Stage.UNMASK, 3, 0, 2)
