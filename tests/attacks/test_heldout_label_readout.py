"""Reading the label holder's held-out labels through the evaluation, job after job.

The coordinator relays the held-out embeddings the label holder scores; sealed end to end, it
cannot make them itself (tests/attacks/test_vertical_sealed_relay.py), but with a feature node
on its side (which holds the sealing key) it can, and then make the counts
give one row's label away: +M on that row, −M on every other, and the row is the only predicted
positive (or, with the top weights' sign the other way, the only predicted negative), so tp (or fn)
is its label. Each resubmission of the job (another id or seed: another holdout,
approved at no label-DP cost since the (label, ε) release is already paid) reads another row.
Counted against the true held-out labels, that read every label exactly, label DP or not. Under
`label_dp` the label holder now counts the held-out rows against their randomized-response labels
(the same keyed flips as training): the read-out gets the noisy label, the same in every job, so
it learns no more than the label-DP release allows. Without label DP (positive control) it reads
the true label. On the nodes' real ClientApp handlers (tests/clientapp_relay.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from federated.admission import LedgerAdmission
from federated.grid_io import arrays_of
from federated.jobs import JobSpec
from federated.node import is_holdout
from federated.vertical import to_half
from federated.vertical_client import label_words, training_labels
from tests.clientapp_relay import Federation, federation

EVERYONE = [f"pseudonym{i:05d}" for i in range(160)]
SETS = {"civil": EVERYONE[:140], "tax": EVERYONE[10:], "hrss": EVERYONE[5:150]}
TRUE_LABEL = {s: i % 2 for i, s in enumerate(SETS["civil"])}  # the fixture's civil.label


def _read_held_out_label(
    fed: Federation, job: JobSpec, tmp_path: Path, run: int, target: str | None = None
) -> tuple[str, int] | None:
    """One resubmission, run honestly up to the evaluation, whose embeddings the coordinator crafts
    to read one held-out row: `target`'s (None if it is not held out this time), else the first."""
    for agency in fed.node_of:
        home = tmp_path / agency
        assert LedgerAdmission(home / "ledger.sqlite", home / "store.sqlite")(job, agency).approved
    fed.relay.job, fed.relay.run_id = job, run
    civil = fed.node_of["civil"]
    feature = {a: n for a, n in fed.node_of.items() if a != "civil"}
    _, test = fed.set_up()
    first = {"step": 0, "grad_step": -2}
    embs = {a: arrays_of(fed.relay.send("train.step", {n: (first, {})})[n])["emb"] for a, n in feature.items()}
    grads = arrays_of(fed.relay.send("train.top", {civil: ({"step": 0, "order": list(fed.node_of)}, embs)})[civil])
    last = {"step": job.rounds, "grad_step": 0, "last": True}
    for a, n in feature.items():
        fed.relay.send("train.step", {n: (last, {"grad": grads[a]})})
    run = tmp_path / "civil" / "fl-cache" / job.job_id / f"run-{fed.relay.run_id}"
    order = (run / "psi-order.txt").read_text().split("\n")
    held_out = [order[r] for r in test]  # which subject is which row: for scoring the attack only
    if target is not None and target not in held_out:
        return None
    row = held_out.index(target) if target is not None else 0
    sign = np.full((len(test), 1), -1.0)
    sign[row] = 1.0  # the target: the only row predicted positive
    # Sealed end to end: the coordinator needs a feature node's help (its key) to send these.
    crafted = {
        a: fed.sealed_by(a, to_half(np.repeat(sign * 1e4, job.embedding_dim, axis=1)), "heldout", job.rounds)
        for a in feature
    }
    cfg = fed.relay.send("evaluate.top", {civil: ({"order": list(fed.node_of)}, crafted)})[civil].content["cfg"]
    tp, fp, tn, fn = (int(cfg[k]) for k in ("tp", "fp", "tn", "fn"))
    # The target is alone on its side of the threshold (which side depends on the top weights' sign).
    assert 1 in (tp + fp, tn + fn)
    return held_out[row], tp if tp + fp == 1 else fn


def _noisy_label(fed: Federation, job: JobSpec, subject: str) -> int:
    """The label holder's randomized-response label of `subject` (its keyed release)."""
    nc = fed.relay.configs[fed.node_of["civil"]]
    return int(training_labels(job, np.asarray([TRUE_LABEL[subject]]), label_words(nc, job, [subject]))[0])


def test_under_label_dp_resubmissions_read_only_the_noisy_release(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    read = []
    for k in range(10):  # at ε = 0.2 a label flips with p = 0.45: true labels would show within a few reads
        job = fed.job.model_copy(update={"job_id": f"resubmitted-{k}", "seed": k, "label_dp": 0.2})
        got = _read_held_out_label(fed, job, tmp_path, 100 + k)
        assert got is not None
        assert got[1] == _noisy_label(fed, job, got[0])  # what the label-DP release says, nothing more
        read.append(got)
    # The same subject read again in later jobs gets the same noisy label: no fresh flip to average.
    # (Seeds that hold the target out, found as the label holder's split rule finds them.)
    target, first = read[0]
    later = fed.job.model_copy(update={"label_dp": 0.2})
    seeds = [seed for seed in range(10, 400) if is_holdout([target], later.model_copy(update={"seed": seed}), None)[0]]
    again = []
    for k, seed in enumerate(seeds[:3]):
        job = later.model_copy(update={"job_id": f"again-{k}", "seed": seed})
        got = _read_held_out_label(fed, job, tmp_path, 200 + k, target)
        assert got is not None
        again.append(got[1])
    assert again == [first] * 3


def test_positive_control_without_label_dp_the_read_out_is_the_true_label(tmp_path: Path) -> None:
    fed = federation(tmp_path, SETS)
    for k in range(3):
        job = fed.job.model_copy(update={"job_id": f"plain-{k}", "seed": k})
        got = _read_held_out_label(fed, job, tmp_path, 300 + k)
        assert got is not None and got[1] == TRUE_LABEL[got[0]]
