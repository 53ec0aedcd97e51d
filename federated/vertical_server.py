"""Vertical ServerApp (Message API): orchestrates alignment, then split learning or stacked parts
(`vertical_scheme`), between nodes.

The server relays, it does not compute on data: it aligns the nodes by private set intersection
(federated/psi.py; it sees blinded tags, digests and masked shares, never a pseudonym, and learns
of who holds what only the intersection). The embeddings and gradients (a stacked job: the
training labels and held-out scores) it relays are sealed end to end between each feature node
and the label holder (crypto/sealed_arrays.py): it passes
ciphertext on and learns their sizes, the per-step loss and the final evaluation summary. With
record-level DP the feature nodes' setup replies carry their accountants' epsilon, which the
summary reports. Every send has a timeout; a node
failing at any point fails the job with a message naming the agency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from federated import label_dp, psi, psi_keys
from federated.events import JsonlSink, make_event
from federated.grid_io import allowed_nodes, arrays_of, cfg_of, exchange
from federated.jobs import JobSpec, VerticalScheme
from xgate.errors import VerticalFailed as VerticalFailed  # re-exported: raised here

# Nobody in common is most often a setup slip: the agencies' stores were loaded under different keys.
NO_OVERLAP = "the nodes share no subjects (did every agency load its data with the same federation pseudonym key?)"


class _Relay:
    def __init__(self, grid: Grid, job: JobSpec, emit: JsonlSink) -> None:
        self.grid, self.job, self.emit = grid, job, emit
        self.agency: dict[int, str] = {}

    def send(
        self, kind: str | dict[int, str], per_node: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]]
    ) -> dict[int, Message]:
        kinds = kind if isinstance(kind, dict) else dict.fromkeys(per_node, kind)
        msgs = []
        for nid, (conf, arrs) in per_node.items():
            rd = RecordDict({"cfg": ConfigRecord(conf)})
            if arrs:
                rd["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrs.items()})
            msgs.append(Message(rd, dst_node_id=nid, message_type=kinds[nid]))
        replies = exchange(self.grid, msgs, self.job.round_timeout_s)
        for nid in per_node:
            who = self.who(nid)
            if nid not in replies:
                self.fail(who, f"no reply to '{kinds[nid]}' before the timeout")
            if replies[nid].has_error():
                self.fail(who, f"'{kinds[nid]}' failed: {(replies[nid].error.reason or '')[:300]}")
        return replies

    def send_mixed(
        self, per_node: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]], label_node: int
    ) -> dict[int, Message]:
        """One Flower round: `train.top` to the label holder, `train.step` to the others."""
        kinds = {n: "train.top" if n == label_node else "train.step" for n in per_node}
        return self.send(kinds, per_node)

    def who(self, node: int) -> str:
        return self.agency.get(node, str(node))

    def number(self, node: int, reply: Message, name: str) -> float:
        """A finite number `node` must put in its reply, or the job fails naming its agency."""
        got = cfg_of(reply).get(name)
        if isinstance(got, bool) or not isinstance(got, int | float) or not math.isfinite(got):
            self.fail(self.who(node), f"returned no valid '{name}'")
        return float(got)

    def count(self, node: int, reply: Message, name: str) -> int:
        got = cfg_of(reply).get(name)
        if isinstance(got, bool) or not isinstance(got, int) or got < 0:
            self.fail(self.who(node), f"returned no valid '{name}'")
        return got

    def text(self, node: int, reply: Message, name: str) -> str:
        got = cfg_of(reply).get(name)
        if not isinstance(got, str):
            self.fail(self.who(node), f"returned no '{name}'")
        return got

    def array(self, node: int, reply: Message, name: str) -> np.ndarray:
        got = arrays_of(reply).get(name)
        if got is None:
            self.fail(self.who(node), f"returned no '{name}' array")
        return got

    def fail(self, agency: str, reason: str) -> NoReturn:
        self.emit(make_event(self.job.job_id, "job_failed", agency=agency, reason=reason))
        raise VerticalFailed(agency, reason)


def _wait_nodes(grid: Grid, n: int, timeout: float, allowed: set[int] | None = None) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        ids = sorted(i for i in grid.get_node_ids() if allowed is None or i in allowed)
        if len(ids) >= n or time.monotonic() > deadline:
            return ids
        time.sleep(0.5)


def _private_alignment(relay: _Relay, parts: list[int], label_node: int, hello: dict[int, Message]) -> psi.Alignment:
    """PSI (federated/psi.py) in three rounds: every other node finishes the label holder's blinded
    list and keeps it, while the label holder finishes each of theirs (returned in secret orders)
    and seals a group seed to each; each node matches its returned list and sends a masked
    membership share, and the shares' sum names the intersection and nothing else; each node then
    says where the aligned subjects sit in the list returned to it. Whoever sends a malformed
    reply is named: blinding is deterministic and injective, so a repeated tag is the fault of
    whoever produced that list."""
    first = {n: _tags(relay, n, cfg_of(hello[n]).get("tags"), psi.TAG_BYTES) for n in parts}
    agree = {n: _agreement_key(relay, n, cfg_of(hello[n]), first[n]) for n in parts}
    sizes = {n: psi.count(tags) for n, tags in first.items()}
    label_count = sizes[label_node]
    others = [n for n in parts if n != label_node]
    if not others:  # the label holder holds every feature: all its rows are aligned
        if not label_count:
            relay.fail("federation", NO_OVERLAP)
        return psi.Alignment(label_node, label_count, list(range(label_count)), {}, {})
    returned, seeds, label_checked = _blind(relay, first, agree, label_node, others)
    aligned, nodes_checked = _membership(relay, returned, seeds, agree, label_node, others, label_count)
    replies = relay.send("train.partners", {n: ({"aligned": psi.rows_to_bytes(aligned)}, {}) for n in others})
    rows: dict[int, list[int]] = {}
    signatures: dict[int, bytes] = {}
    for n in others:
        rows[n] = _rows_from(relay, n, cfg_of(replies[n]).get("rows"), sizes[n], "aligned positions")
        if len(rows[n]) != len(aligned):
            relay.fail(relay.agency[n], "returned positions that are not the aligned subjects")
        signature = cfg_of(replies[n]).get("rows_sig", b"")
        if not isinstance(signature, bytes):
            relay.fail(relay.agency[n], "returned a malformed signature over its aligned positions")
        signatures[n] = signature
    counts = {n: sizes[n] for n in others}
    checked = label_checked and nodes_checked
    return psi.Alignment(label_node, label_count, aligned, rows, counts, keys_checked=checked, signatures=signatures)


def _blind(
    relay: _Relay, first: dict[int, bytes], agree: dict[int, _Signed], label_node: int, others: list[int]
) -> tuple[list[bytes], list[bytes], bool]:
    """`train.blind`: each other node finishes the label holder's list and keeps it; the label
    holder finishes theirs. Returns the lists it returned (digests, secret orders), the group
    seed it sealed to each node, in `others`' order, and whether it says it verified their keys."""
    requests: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]]
    requests = {n: ({"tags": [first[label_node]]}, {}) for n in others}
    requests[label_node] = ({"tags": [first[n] for n in others], **_key_list(relay, agree, others)}, {})
    replies = relay.send("train.blind", requests)
    returned = _finished(relay, label_node, replies[label_node], [psi.count(first[n]) for n in others])
    seeds = cfg_of(replies[label_node]).get("seeds")
    if not isinstance(seeds, list) or len(seeds) != len(others) or not all(isinstance(x, bytes) for x in seeds):
        relay.fail(relay.agency[label_node], "returned no sealed group seed for every other node")
    for n in others:
        if cfg_of(replies[n]).get("finished") != psi.count(first[label_node]):
            relay.fail(relay.agency[n], "did not finish the label holder's whole list")
    return returned, seeds, cfg_of(replies[label_node]).get("keys_checked") is True


def _membership(
    relay: _Relay,
    returned: list[bytes],
    seeds: list[bytes],
    agree: dict[int, _Signed],
    label_node: int,
    others: list[int],
    label_count: int,
) -> tuple[list[int], bool]:
    """`train.membership`: each node's masked share per label holder row; their sum names the
    aligned rows (positions in the label holder's list) and nothing else. Also whether every node
    says it verified the keys it used."""
    keys = {
        **_key_list(relay, agree, others),
        **{f"label_{k}": v for k, v in _key_list(relay, agree, [label_node]).items()},
    }
    requests: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]] = {
        n: ({"matches": returned[i], "seed": seeds[i], "index": i, **keys}, {}) for i, n in enumerate(others)
    }
    replies = relay.send("train.membership", requests)
    shares: dict[int, bytes] = {}
    for n in others:
        share = cfg_of(replies[n]).get("share")
        try:
            psi.share_values(share, label_count)
        except ValueError as e:
            relay.fail(relay.agency[n], str(e))
        shares[n] = cast(bytes, share)
    aligned = psi.intersect(shares, label_count)
    if not aligned:
        relay.fail("federation", NO_OVERLAP)
    return aligned, all(cfg_of(replies[n]).get("keys_checked") is True for n in others)


# A node's agreement key and its statement: agree, agree_cert, agree_sig, and agree_list (the
# digest of its hello list, which the statement covers).
_Signed = dict[str, bytes]
_STATEMENT = ("agree", "agree_cert", "agree_sig", "agree_list")


def _agreement_key(relay: _Relay, node: int, hello: dict[str, Any], tags: bytes) -> _Signed:
    """`node`'s agreement key with its signed statement (checked by the nodes, federated/psi_keys.py)."""
    signed = {k: hello.get(k) for k in ("agree", "agree_cert", "agree_sig")}
    if not all(isinstance(v, bytes) for v in signed.values()) or len(cast(bytes, signed["agree"])) != psi.TAG_BYTES:
        relay.fail(relay.agency[node], "returned a malformed agreement key")
    return {**cast(_Signed, signed), "agree_list": psi_keys.list_digest(tags)}


def _key_list(relay: _Relay, agree: dict[int, _Signed], nodes: list[int]) -> dict[str, list[Any]]:
    """The keys of `nodes`, each with the agency it is listed for and its statement, as columns."""
    columns: dict[str, list[Any]] = {"agencies": [relay.agency[n] for n in nodes]}
    for name in _STATEMENT:
        columns[name] = [agree[n][name] for n in nodes]
    return columns


def _tags(relay: _Relay, node: int, tags: object, size: int) -> bytes:
    """A list of distinct `size`-byte tags from `node`, or the job fails naming it."""
    if not isinstance(tags, bytes) or len(tags) % size:
        relay.fail(relay.agency[node], "returned a malformed blinded list")
    if size == psi.TAG_BYTES:
        try:
            psi.check_tags(tags)
        except ValueError as e:
            relay.fail(relay.agency[node], str(e))
    if len(set(psi.split(tags, size))) != len(tags) // size:
        relay.fail(relay.agency[node], "listed a subject twice")
    return tags


def _finished(relay: _Relay, node: int, reply: Message, sizes: list[int]) -> list[bytes]:
    """`node`'s finished lists (digests), one per list it was sent, each as long as that list."""
    got = cfg_of(reply).get("matches")
    if not isinstance(got, list) or len(got) != len(sizes):
        relay.fail(relay.agency[node], "returned a malformed blinded list")
    lists = [_tags(relay, node, tags, psi.MATCH_BYTES) for tags in got]
    if [psi.count(tags, psi.MATCH_BYTES) for tags in lists] != sizes:
        relay.fail(relay.agency[node], "returned a malformed blinded list")
    return lists


def _setup_requests(
    alignment: psi.Alignment,
    parts: Sequence[int],
    label_node: int,
    train_rows: Sequence[int],
    test_rows: Sequence[int],
    width: int,
) -> dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Each node's `setup`: its training and held-out rows as positions in its own list, whether it
    is the label holder (it checks that itself), and the width of the top model."""
    return {
        n: (
            {
                "train": psi.rows_to_bytes(alignment.positions(n, train_rows)),
                "test": psi.rows_to_bytes(alignment.positions(n, test_rows)),
                "label_holder": n == label_node,
                "width": width,
            },
            {},
        )
        for n in parts
    }


def _split(relay: _Relay, alignment: psi.Alignment) -> tuple[psi.Alignment, list[int], list[int]]:
    """The label holder's train/test split of the aligned rows (its holdout rule), checked to be
    one, and its translation of the other nodes' aligned rows into their lists' own positions."""
    node = alignment.label_node
    aligned = alignment.label_rows
    others = sorted(alignment.rows)
    request: dict[str, Any] = {"aligned": psi.rows_to_bytes(aligned)}
    if others:
        request["partners"] = [psi.rows_to_bytes(alignment.rows[n]) for n in others]
        request["partner_sigs"] = [alignment.signatures.get(n, b"") for n in others]
    reply = cfg_of(relay.send("train.align", {node: (request, {})})[node])
    train_rows, test_rows = (_rows_from(relay, node, reply.get(k), alignment.label_count) for k in ("train", "test"))
    if sorted(train_rows + test_rows) != aligned:
        relay.fail(relay.agency[node], "returned a train/test split that is not the aligned subjects")
    partners = reply.get("partners", []) if others else []
    if not isinstance(partners, list) or len(partners) != len(others):
        relay.fail(relay.agency[node], "returned no positions for the other nodes' aligned subjects")
    rows = {
        n: _rows_from(relay, node, data, alignment.counts[n], "positions for another node")
        for n, data in zip(others, partners, strict=True)
    }
    if any(len(r) != len(aligned) for r in rows.values()):
        relay.fail(relay.agency[node], "returned positions that are not the aligned subjects")
    return dataclasses.replace(alignment, rows=rows), train_rows, test_rows


def _rows_from(relay: _Relay, node: int, data: object, size: int, what: str = "train/test split") -> list[int]:
    if not isinstance(data, bytes):
        relay.fail(relay.agency[node], f"returned no {what}")
    try:
        return psi.rows_from_bytes(data, size)
    except ValueError as e:
        relay.fail(relay.agency[node], str(e))


def _dp_summary(job: JobSpec, relay: _Relay, setup: dict[int, Message]) -> dict[str, Any]:
    """`dp` of the summary (and the `dp_spent` event): each feature node's own accountant
    (federated/vertical_dp.py), as its setup reply reported it; nothing for a job without DP."""
    if job.dp is None:
        return {}
    keys = ("dp_epsilon", "dp_sigma", "dp_sample_rate", "dp_steps")
    nodes: dict[str, dict[str, Any]] = {}
    for n, m in setup.items():
        if "dp_epsilon" in cfg_of(m):
            for k in keys:  # each a finite number, or the job fails naming the node
                relay.number(n, m, k)
            nodes[relay.agency[n]] = {k: cfg_of(m)[k] for k in keys}  # as sent: the steps stay a count
    eps = max((float(v["dp_epsilon"]) for v in nodes.values()), default=0.0)
    relay.emit(make_event(job.job_id, "dp_spent", rounds=job.rounds, epsilon=eps, delta=job.dp.delta, unit="record"))
    return {"dp": {"unit": "record", "epsilon": eps, "delta": job.dp.delta, "clip": job.dp.clip, "nodes": nodes}}


def _evaluation(relay: _Relay, label_node: int, scored: Message, held_out: int) -> dict[str, Any]:
    """The label holder's evaluation reply, checked: the rows it counted and the rows it fitted a
    calibrated top on are the held-out rows, and it calibrated exactly when the job asks it to.
    Which rows it fitted on is the label holder's to say (it holds the labels): the coordinator
    checks the counts, not the split."""
    ev = cfg_of(scored)
    who = relay.who(label_node)
    confusion = {k: relay.count(label_node, scored, k) for k in ("tp", "fp", "tn", "fn")}
    counted = sum(confusion.values())
    asked = relay.job.top_calibration is not None
    # A job without the option needs no such field (a label holder of an earlier version sends none).
    calibration_rows = relay.count(label_node, scored, "calibration_rows") if asked or "calibration_rows" in ev else 0
    calibrated = ev.get("top_calibrated", False)
    if not isinstance(calibrated, bool):
        relay.fail(who, "returned no valid 'top_calibrated'")
    if calibrated != (calibration_rows > 0) or (calibrated and not asked):
        relay.fail(who, f"reported top_calibrated={calibrated} with {calibration_rows} calibration rows")
    if counted + calibration_rows != held_out:  # every held-out row counted or fitted on, none both
        relay.fail(who, f"counted {counted} + {calibration_rows} of {held_out} held-out rows")
    return {
        "auc": relay.number(label_node, scored, "auc"),
        "balanced_accuracy": relay.number(label_node, scored, "balanced_accuracy"),
        "threshold": relay.number(label_node, scored, "threshold"),
        "confusion_matrix": confusion,
        "n": counted,
        # Record-level DP: the label holder scored with weights undoing the noise's dilution.
        "top_deattenuated": bool(ev.get("top_deattenuated", False)),
        # ... and its bias moved so the mean held-out score is the training prevalence (no label used).
        "top_recentred": bool(ev.get("top_recentred", False)),
        # Or (`top_calibration`) its top fitted on this many held-out rows, which `n` does not count.
        "top_calibrated": calibrated,
        "calibration_rows": calibration_rows,
        "held_out_rows": held_out,
        # Label DP: the label holder counted against the noisy held-out labels; these are estimates.
        "estimated_from_noisy_labels": bool(ev.get("estimated_from_noisy_labels", False)),
    }


def _split_learning(
    relay: _Relay, label_node: int, feature_nodes: list[int], order: list[str]
) -> tuple[dict[int, Message], list[dict[str, Any]]]:
    """Pipelined split learning: in Flower round i the feature nodes apply G[i-2] and embed batch i
    while the label holder consumes E[i-1] and returns G[i-1]: one message round trip per step.
    Returns the feature nodes' last replies (their held-out embeddings) and the loss curve."""
    job = relay.job
    grads: dict[int, dict[int, np.ndarray]] = {}
    embs: dict[int, dict[int, np.ndarray]] = {}
    curve: list[dict[str, Any]] = []
    for i in range(job.rounds + 1):
        batch: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}
        if i < job.rounds or (i - 2) in grads:
            for n in feature_nodes:
                g = grads.get(i - 2, {})
                batch[n] = ({"step": i, "grad_step": i - 2}, {"grad": g[n]} if n in g else {})
        if i >= 1:
            batch[label_node] = (
                {"step": i - 1, "order": order},
                {relay.agency[n]: e for n, e in embs.pop(i - 1, {}).items()},
            )
        if not batch:
            continue
        replies = relay.send_mixed(batch, label_node)
        if i < job.rounds and feature_nodes:
            embs[i] = {n: relay.array(n, replies[n], "emb") for n in feature_nodes}
        if i >= 1:
            top = replies[label_node]
            grads[i - 1] = {n: relay.array(label_node, top, relay.agency[n]) for n in feature_nodes}
            loss = relay.number(label_node, top, "loss")
            # Of the sealed gradients as relayed: what passed through, not their values.
            digest = hashlib.sha256(b"".join(g.tobytes() for g in grads[i - 1].values())).hexdigest()
            curve.append({"round": i, "loss": loss})
            relay.emit(
                make_event(
                    job.job_id, "round_completed", round=i, participants=order, train_loss=loss, gradients_sha256=digest
                )
            )
        grads.pop(i - 2, None)
    last = job.rounds - 1
    bottoms = (
        relay.send(
            "train.step",
            {
                n: ({"step": job.rounds, "grad_step": last, "last": True}, {"grad": grads[last][n]})
                for n in feature_nodes
            },
        )
        if feature_nodes
        else {}
    )
    return bottoms, curve


def _stacked(
    relay: _Relay, label_node: int, feature_nodes: list[int], order: list[str]
) -> tuple[dict[int, Message], list[dict[str, Any]]]:
    """Stacked parts in one exchange: the label holder trains its own part and seals the training
    labels to each feature node (`train.labels`); each feature node trains its part and returns
    its held-out rows' scores (`train.fit`). Returns those replies and the one-point loss curve
    (the label holder's own part's training loss)."""
    labels = relay.send("train.labels", {label_node: ({"order": order}, {})})[label_node]
    sealed = {n: relay.array(label_node, labels, relay.agency[n]) for n in feature_nodes}
    loss = relay.number(label_node, labels, "loss")
    # Of the sealed labels as relayed: what passed through, not their values.
    digest = hashlib.sha256(b"".join(a.tobytes() for a in sealed.values())).hexdigest()
    bottoms = relay.send("train.fit", {n: ({}, {"labels": sealed[n]}) for n in feature_nodes}) if feature_nodes else {}
    relay.emit(
        make_event(
            relay.job.job_id, "round_completed", round=1, participants=order, train_loss=loss, labels_sha256=digest
        )
    )
    return bottoms, [{"round": 1, "loss": loss}]


def run_vertical(grid: Grid, context: Context, job: JobSpec, job_dir: Path) -> None:
    emit = JsonlSink(job_dir / "server-events.jsonl")
    relay = _Relay(grid, job, emit)
    wanted = int(context.run_config.get("nodes", job.min_nodes))
    ids = _wait_nodes(grid, wanted, job.round_timeout_s, allowed_nodes(context.run_config))
    hello = relay.send("query.hello", {nid: ({}, {}) for nid in ids})
    holders: dict[int, list[str]] = {}
    label_node = None
    for nid, m in hello.items():
        relay.agency[nid] = relay.text(nid, m, "agency")
        features = cfg_of(m).get("features")
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            relay.fail(relay.who(nid), "returned no list of the features it holds")
        if features:
            holders[nid] = list(features)
        if cfg_of(m).get("has_label") is True:
            label_node = nid
    if label_node is None:
        relay.fail(job.label_holder, "label holder is not connected or does not hold the label")
    holders.setdefault(label_node, [])
    missing = set(job.features) - {f for fs in holders.values() for f in fs}
    if missing:
        relay.fail("federation", f"no connected node holds {sorted(missing)}")
    if len(holders) < job.min_nodes:
        relay.fail("federation", f"{len(holders)} participating nodes, job needs {job.min_nodes}")
    parts = sorted(holders)
    order = [relay.agency[n] for n in parts]

    # Alignment by private set intersection (federated/psi.py); the label holder then decides the
    # train/test split, as positions in its own (shuffled) list, and translates the other nodes'
    # aligned rows into their own positions. No node ever receives another node's positions.
    alignment = _private_alignment(relay, parts, label_node, hello)
    aligned = alignment.label_rows
    alignment, train_rows, test_rows = _split(relay, alignment)
    emit(
        make_event(
            job.job_id,
            "aligned",
            subjects=len(aligned),
            nodes=order,
            aligned_sha256=hashlib.sha256(psi.rows_to_bytes(aligned)).hexdigest(),
            psi=True,
            # every node said it verified the agreement keys it sealed to or agreed with
            keys_checked=alignment.keys_checked,
        )
    )
    width = job.part_width() * len(parts)
    setup = relay.send("train.setup", _setup_requests(alignment, parts, label_node, train_rows, test_rows, width))
    feature_nodes = [n for n in parts if n != label_node]
    if job.vertical_scheme is VerticalScheme.STACKED:
        bottoms, curve = _stacked(relay, label_node, feature_nodes, order)
    else:
        bottoms, curve = _split_learning(relay, label_node, feature_nodes, order)
    test_embs = {relay.agency[n]: relay.array(n, bottoms[n], "emb") for n in bottoms}
    scored = relay.send("evaluate.top", {label_node: ({"order": order}, test_embs)})[label_node]
    evaluation = _evaluation(relay, label_node, scored, len(test_rows))
    part_digests = {relay.agency[n]: relay.text(n, bottoms[n], "bottom_sha256") for n in bottoms}
    part_digests["top@" + relay.agency[label_node]] = relay.text(label_node, scored, "top_sha256")
    model_sha = hashlib.sha256(json.dumps(part_digests, sort_keys=True).encode()).hexdigest()
    curve[-1].update(evaluation)
    emit(
        make_event(
            job.job_id,
            "round_evaluated",
            round=job.rounds,
            auc=evaluation["auc"],
            balanced_accuracy=evaluation["balanced_accuracy"],
            model_sha256=model_sha,
        )
    )
    # The vertical model stays split across the nodes; the server keeps only its parts' digests.
    np.savez(job_dir / "model.npz", parts=np.array(sorted(part_digests.items())))
    summary = {
        "curve": curve,
        "evaluation": evaluation,
        "model_sha256": model_sha,
        "model_parts": part_digests,
        "aligned_subjects": len(aligned),
        "train_subjects": len(train_rows),
        "nodes": order,
        **(
            {
                "label_dp": {
                    "epsilon": job.label_dp,
                    "flip_probability": label_dp.flip_probability(job.label_dp),
                    "label_inference_bound": label_dp.attack_bound(job.label_dp),
                }
            }
            if job.label_dp is not None
            else {}
        ),
        "data_digests": {
            str(n): {"agency": relay.agency[n], "data_sha256": str(cfg_of(hello[n]).get("data_sha256", ""))}
            for n in parts
        },
    }
    summary.update(_dp_summary(job, relay, setup))
    (job_dir / "server-summary.json").write_text(json.dumps(summary, indent=1))
