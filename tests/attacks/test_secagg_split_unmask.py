"""A malicious coordinator sends different nodes different SecAgg+ unmask lists and reads one node's
update, every neighbour honest and certified (review: /tmp/review-i/unmask_split_view.py).

Flower's SecAgg+ has no consistency round: each unmask message is checked alone (no node listed
both active and dead, federated/secagg_guard.py), so the coordinator forwards the victim the
ciphertexts of few neighbours at collect-masked-vectors (it masks with those only), then tells some
nodes the victim is active (they hand out shares of its self-mask seed) and that its neighbours are
dead (they hand out shares of those neighbours' sk1): threshold shares of each rebuild the victim's
masks, hence its individual update.

Now (Bonawitz et al. 2017, ConsistencyCheck; federated/secagg_keys.py): before unmask each node
signs, once per round, the lists it will be sent, with its certified SuperNode key; at unmask it
refuses lists other than those it signed, and lists fewer than `threshold` distinct agencies
(verified at share-keys) signed. A node also refuses a list calling it dead (it sent its masked
vector) or calling active a node that never sent it shares (Bonawitz's U3 within U2): the review's
own 3-node plan sends two nodes the same lists, so signatures alone would not stop it.

Real Flower messages through xgate's `secagg_app` and Flower's own `secaggplus_mod`; the
coordinator's side is built here as Flower's `SecAggPlusWorkflow` and xgate's relay would, then
split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from crypto import pki
from crypto.flower_keys import FlowerSecurity, prepare_flower_security
from federated import secagg_guard, secagg_keys
from federated.horizontal_client import secagg_app
from federated.jobs import JobSpec
from tests.attacks.test_secagg_downgrade import NIDS, Node, _collect, _error, _job, _setup, _stage
from tests.attacks.test_secagg_sybils import MOD, MODULUS, TARGET, _certified

VICTIM, MASKED_WITH, OTHER = 11, 12, 13
Lists = tuple[list[int], list[int]]
# per node: the active and dead lists the coordinator sends it (nodes not named are not asked)
# views differ, each passes every check of one node alone (Flower's: at least `threshold` active)
SPLIT: dict[int, Lists] = {VICTIM: ([11, 12], []), 12: ([11, 12, 13], []), OTHER: ([11, 13], [12])}
REVIEW: dict[int, Lists] = {12: ([11, 13], [12]), OTHER: ([11, 13], [12])}  # the review's plan (N = 3)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> FlowerSecurity:
    """The federation's material: r11..r13 certified by its CA."""
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca", "federation CA")
    return prepare_flower_security(root / "fed", ["r11", "r12", "r13"], ca_dir=root / "ca")


class Grid:
    """The SuperLink as the ServerApp's workflow sees it: messages delivered to the in-process nodes."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = {n.nid: n for n in nodes}

    def send_and_receive(self, messages: Any, timeout: float | None = None) -> list[Message]:
        return [self.nodes[m.metadata.dst_node_id].ask(secagg_app, m.content) for m in messages]


def _masked_round(
    nodes: list[Node], monkeypatch: pytest.MonkeyPatch, withhold: bool
) -> tuple[secagg_keys.StatementRelay, dict[str, Any]]:
    """Setup and share-keys relayed as the ServerApp does (3 shares, threshold 2); at collect, when
    `withhold`, the victim is forwarded only MASKED_WITH's ciphertext. The victim's masked vector,
    its keys and (ground truth, from a spy) the update it masked."""
    truth: list[Any] = []
    multiply = MOD.parameters_multiply

    def spy(params: list[np.ndarray], factor: float) -> Any:
        truth.append(([p.copy() for p in params], factor))
        return multiply(params, factor)

    monkeypatch.setattr(MOD, "parameters_multiply", spy)
    relay = secagg_keys.StatementRelay()
    replies = [n.ask(secagg_app, _setup(len(nodes), 2)) for n in nodes]
    relay._collect(replies)
    public = {}
    for n, reply in zip(nodes, replies, strict=True):
        cfg = reply.content.config_records[RECORD_KEY_CONFIGS]
        public[str(n.nid)] = [cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]]
    fwd: dict[int, tuple[list[int], list[bytes]]] = {n.nid: ([], []) for n in nodes}
    for n in nodes:
        msg = Message(_stage(Stage.SHARE_KEYS, **public), dst_node_id=n.nid, message_type=MessageType.TRAIN)
        relay._relay([msg])
        shared = n.ask(secagg_app, msg.content)
        assert not shared.has_error(), shared.error.reason
        res = shared.content.config_records[RECORD_KEY_CONFIGS]
        for dst, ct in zip(cast(list[int], res[Key.DESTINATION_LIST]), cast(list[bytes], res[Key.CIPHERTEXT_LIST])):
            if dst == VICTIM and withhold and n.nid != MASKED_WITH:
                continue
            fwd[dst][0].append(n.nid)
            fwd[dst][1].append(ct)
    out: dict[str, Any] = {"pk": public}
    for n in nodes:
        fit = _collect(*fwd[n.nid])
        truth.clear()
        masked = n.ask(secagg_app, fit)
        assert not masked.has_error(), masked.error.reason
        if n.nid == VICTIM:
            out["truth"] = truth[0]
            sent = cast(list[bytes], masked.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])
            out["masked"] = [bytes_to_ndarray(b) for b in sent]
    return relay, out


def _consistency(node: Node, lists: Lists) -> Message:
    return node.ask(
        secagg_app,
        _stage(secagg_keys.CONSISTENCY, **{Key.ACTIVE_NODE_ID_LIST: lists[0], Key.DEAD_NODE_ID_LIST: lists[1]}),
    )


def _signature(reply: Message) -> bytes:
    assert not reply.has_error(), reply.error.reason
    return cast(bytes, reply.content.config_records[secagg_keys.SIGNATURE]["signature"])


def _unmask(node: Node, lists: Lists, signatures: dict[str, list[bytes]] | None) -> Message:
    content = _stage(Stage.UNMASK, **{Key.ACTIVE_NODE_ID_LIST: lists[0], Key.DEAD_NODE_ID_LIST: lists[1]})
    if signatures is not None:
        content.config_records[secagg_keys.SIGNATURES] = ConfigRecord(signatures)  # type: ignore[arg-type]
    return node.ask(secagg_app, content)


def _certs(relay: secagg_keys.StatementRelay) -> dict[int, bytes]:
    return {nid: row[1] for nid, row in relay.statements.items()}


def _split_attack(
    nodes: list[Node], plan: dict[int, Lists], monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[int, Message], dict[int, Message], dict[str, Any] | None]:
    """The coordinator's attack: the victim masks with MASKED_WITH only; each node in `plan` is asked
    to sign, then to unmask, its own lists, every signature it could collect attached. The victim's
    update when the shares it gets suffice, else None."""
    relay, got = _masked_round(nodes, monkeypatch, withhold=True)
    by_id = {n.nid: n for n in nodes}
    signed = {nid: _consistency(by_id[nid], lists) for nid, lists in plan.items()}
    certs = _certs(relay)
    sigs = {str(nid): [certs[nid], _signature(r)] for nid, r in signed.items() if not r.has_error()}
    unmasked = {nid: _unmask(by_id[nid], lists, sigs) for nid, lists in plan.items()}
    rd_shares: list[bytes] = []
    sk1_shares: list[bytes] = []
    for nid, reply in unmasked.items():
        if reply.has_error():
            continue
        cfg = reply.content.config_records[RECORD_KEY_CONFIGS]
        for owner, share in zip(cast(list[int], cfg[Key.NODE_ID_LIST]), cast(list[bytes], cfg[Key.SHARE_LIST])):
            if owner == VICTIM and owner in plan[nid][0]:
                rd_shares.append(share)
            elif owner == MASKED_WITH and owner in plan[nid][1]:
                sk1_shares.append(share)
    if len(rd_shares) < 2 or len(sk1_shares) < 2:  # threshold 2
        return signed, unmasked, None
    vec = got["masked"]
    dims = [a.shape for a in vec]
    vec = parameters_subtraction(vec, pseudo_rand_gen(combine_shares(rd_shares[:2]), MODULUS, dims))
    sk1 = combine_shares(sk1_shares[:2])
    pk1 = cast(bytes, got["pk"][str(VICTIM)][0])
    pm = pseudo_rand_gen(generate_shared_key(bytes_to_private_key(sk1), bytes_to_public_key(pk1)), MODULUS, dims)
    vec = parameters_mod(parameters_addition(vec, pm), MODULUS)  # MASKED_WITH > VICTIM: the victim subtracted it
    params, ratio = got["truth"]
    return signed, unmasked, {"update": dequantize(vec[1:], 1.0, TARGET)[0], "true_update": params[0] * ratio}


def _nodes(tmp_path: Path, security: FlowerSecurity) -> tuple[JobSpec, list[Node]]:
    job = _job(secagg=True)
    return job, [_certified(tmp_path, nid, job, security) for nid in NIDS]


# -- the attack, without and with the consistency check --------------------------------------------


@pytest.mark.parametrize("plan", [SPLIT, REVIEW], ids=["split-view", "review-plan"])
def test_positive_control_without_the_check_the_split_unmask_reads_the_victims_update(
    tmp_path: Path, pki_dir: FlowerSecurity, monkeypatch: pytest.MonkeyPatch, plan: Any
) -> None:
    monkeypatch.setattr(secagg_guard, "_consistent", lambda *a: (False, []))  # the check switched off
    _, nodes = _nodes(tmp_path, pki_dir)
    _, unmasked, opened = _split_attack(nodes, plan, monkeypatch)
    assert all(not r.has_error() for r in unmasked.values())  # every node unmasks its own view
    if plan is REVIEW:
        assert opened is not None
        assert np.max(np.abs(opened["update"] - opened["true_update"])) < 1e-5  # the victim's individual update


def test_the_split_view_attack_is_refused_at_unmask(
    tmp_path: Path, pki_dir: FlowerSecurity, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, nodes = _nodes(tmp_path, pki_dir)
    signed, unmasked, opened = _split_attack(nodes, SPLIT, monkeypatch)
    assert opened is None
    assert all(not r.has_error() for r in signed.values())  # each view passes alone: every node signs its own
    for reply in unmasked.values():  # ... but no other agency signed the same lists
        assert "1 distinct agencies (this node's included) signed these unmask lists, the threshold is 2" in _error(
            reply
        )


def test_the_reviews_plan_is_refused_before_any_share(
    tmp_path: Path, pki_dir: FlowerSecurity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both nodes get the same lists: node 12 is called dead though it sent its masked vector, and
    the victim (asked to sign them) never received node 13's shares."""
    _, nodes = _nodes(tmp_path, pki_dir)
    signed, unmasked, opened = _split_attack(nodes, REVIEW, monkeypatch)
    assert opened is None
    assert "is not listed active" in _error(signed[12]) and "is not listed active" in _error(unmasked[12])
    assert "1 distinct agencies" in _error(unmasked[OTHER])
    victim = _consistency(nodes[0], REVIEW[OTHER])
    assert "[13] listed active never sent this node their shares" in _error(victim)


# -- the node's refusals ----------------------------------------------------------------------------

ALL: Lists = (list(NIDS), [])


def _honest(
    tmp_path: Path, security: FlowerSecurity, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Node], dict[int, bytes], dict[str, list[bytes]]]:
    """An honest round up to unmask, every node having signed ALL: nodes, certificates, signatures."""
    _, nodes = _nodes(tmp_path, security)
    relay, _ = _masked_round(nodes, monkeypatch, withhold=False)
    certs = _certs(relay)
    sigs = {str(n.nid): [certs[n.nid], _signature(_consistency(n, ALL))] for n in nodes}
    return nodes, certs, sigs


def test_unmask_lists_other_than_those_signed_are_refused(
    tmp_path: Path, pki_dir: FlowerSecurity, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, _, sigs = _honest(tmp_path, pki_dir, monkeypatch)
    assert "not the ones this node signed" in _error(_unmask(nodes[0], ([11, 12], [13]), sigs))
    assert not _unmask(nodes[0], ALL, sigs).has_error()  # positive control: the lists it signed


def test_unmask_without_a_consistency_round_is_refused(
    tmp_path: Path, pki_dir: FlowerSecurity, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, nodes = _nodes(tmp_path, pki_dir)
    _masked_round(nodes, monkeypatch, withhold=False)
    assert "not asked to sign the unmask lists" in _error(_unmask(nodes[0], ALL, None))


def test_too_few_signatures_are_refused(
    tmp_path: Path, pki_dir: FlowerSecurity, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, _, sigs = _honest(tmp_path, pki_dir, monkeypatch)
    assert "no consistency signatures were relayed" in _error(_unmask(nodes[0], ALL, None))
    assert "1 distinct agencies" in _error(_unmask(nodes[0], ALL, {"11": sigs["11"]}))  # its own only
    forged = {**sigs, "12": [sigs["12"][0], sigs["13"][1]], "13": [sigs["13"][0], sigs["12"][1]]}
    assert "1 distinct agencies" in _error(_unmask(nodes[0], ALL, forged))  # signatures not over these lists
    assert not _unmask(nodes[0], ALL, {"11": sigs["11"], "12": sigs["12"]}).has_error()  # 2 = threshold


def test_signatures_of_one_agency_counted_twice_are_refused(
    tmp_path: Path, pki_dir: FlowerSecurity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agency r12's certificate and signature relayed for node 13 as well (and a node not verified at
    share-keys): one agency cannot stand for two signers."""
    nodes, _, sigs = _honest(tmp_path, pki_dir, monkeypatch)
    twice = {"12": sigs["12"], "13": sigs["12"]}
    assert "another certificate than the one of agency 'r13'" in _error(_unmask(nodes[0], ALL, twice))
    assert "node 14 signed but is not a neighbour" in _error(
        _unmask(nodes[0], ALL, {"12": sigs["12"], "14": sigs["12"]})
    )


def test_a_second_signing_request_with_other_lists_is_refused(
    tmp_path: Path, pki_dir: FlowerSecurity, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, _, sigs = _honest(tmp_path, pki_dir, monkeypatch)
    assert "already signed other unmask lists this round" in _error(_consistency(nodes[0], ([11, 12], [13])))
    assert _signature(_consistency(nodes[0], ALL)) == sigs["11"][1]  # the same lists: the same signature
    assert not _unmask(nodes[0], ALL, sigs).has_error()


# -- the honest round, through the ServerApp's relay, unmasks -------------------------------------


def test_an_honest_round_through_the_relay_signs_and_unmasks(
    tmp_path: Path, pki_dir: FlowerSecurity, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, nodes = _nodes(tmp_path, pki_dir)
    relay, _ = _masked_round(nodes, monkeypatch, withhold=False)
    unmask = [
        Message(_stage(Stage.UNMASK, **{Key.ACTIVE_NODE_ID_LIST: ALL[0], Key.DEAD_NODE_ID_LIST: ALL[1]}),
                dst_node_id=n.nid, message_type=MessageType.TRAIN, group_id="1")
        for n in nodes
    ]  # fmt: skip
    replies = list(relay.consistent(cast(Any, Grid(nodes))).send_and_receive(unmask, timeout=5.0))
    for reply in replies:
        assert not reply.has_error(), reply.error.reason
        assert sorted(cast(list[int], reply.content.config_records[RECORD_KEY_CONFIGS][Key.NODE_ID_LIST])) == ALL[0]
    assert all(len(m.content.config_records[secagg_keys.SIGNATURES]) == 3 for m in unmask)
    for n in nodes:
        *_, last = n.evidence()
        assert last["stage"] == Stage.UNMASK and last["consistent"] is True and last["job_id"] == job.job_id
        assert last["consistency_signers"] == ["r11", "r12", "r13"]
