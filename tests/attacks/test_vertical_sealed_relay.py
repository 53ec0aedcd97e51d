"""The coordinator of a vertical job reading, or forging, what it relays between the nodes.

Split learning sends every training embedding (feature node → label holder), every gradient
(label holder → feature node) and the held-out embeddings through the coordinator. In the clear,
the gradients' signs gave it every aligned subject's training label (the positive control below,
on the real handlers' output), the held-out embeddings were clean linear projections of the
features, and it could send the label holder embeddings of its own making. Each is now sealed end
to end (AES-256-GCM, crypto/sealed_arrays.py) under a key the two ends agree from their certified
X25519 job keys at alignment (federated/psi.py `transport_key`); the associated data binds job,
run, kind, step and feature node. Real ClientApp handlers over tests/clientapp_relay.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from crypto import sealed_arrays
from federated import vertical_client
from federated.grid_io import arrays_of
from federated.vertical import batch_indices, from_half, to_half
from tests.clientapp_relay import Federation, federation
from xgate.errors import CryptoError, VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(400)]
SETS = {"civil": EVERYONE[:380], "tax": EVERYONE[10:], "hrss": EVERYONE[5:390]}


def _first_step(tmp_path: Path) -> tuple[Federation, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Aligned and set up; the feature nodes' step-0 embeddings and the label holder's step-0
    gradients, as the coordinator relays them."""
    fed = federation(tmp_path, SETS)
    fed.set_up()
    feature = {a: n for a, n in fed.node_of.items() if a != "civil"}
    first = {"step": 0, "grad_step": -2}
    embs = {a: arrays_of(fed.relay.send("train.step", {n: (first, {})})[n])["emb"] for a, n in feature.items()}
    civil = fed.node_of["civil"]
    grads = arrays_of(fed.relay.send("train.top", {civil: ({"step": 0, "order": list(fed.node_of)}, embs)})[civil])
    return fed, embs, grads


def _last_steps(fed: Federation, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every feature node's last call of a one-round job: the sealed held-out embeddings it sends."""
    last = {"step": fed.job.rounds, "grad_step": 0, "last": True}
    return {
        a: arrays_of(fed.relay.send("train.step", {n: (last, {"grad": grads[a]})})[n])["emb"]
        for a, n in fed.node_of.items()
        if a != "civil"
    }


def _batch_labels(fed: Federation, tmp_path: Path) -> np.ndarray:
    """The label holder's labels of step 0's batch (to score the attack only)."""
    st = vertical_client._load(tmp_path / "civil" / "fl-cache" / fed.job.job_id)
    idx = batch_indices(len(st["x_train"]), fed.job.batch_size, 0, fed.job.seed)
    return np.asarray(st["y_train"][idx])


def _direction_attack(grad: np.ndarray, labels: np.ndarray) -> float:
    """Project each row's gradient on the batch's leading direction and split by sign; either
    orientation (the attacker does not know which side is positive): the better one."""
    centred = grad - grad.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    guess = (grad @ direction > 0).astype(int)
    right = float((guess == labels).mean())
    return max(right, 1 - right)


def test_positive_control_the_gradients_in_the_clear_give_the_labels_away(tmp_path: Path) -> None:
    """What the coordinator read before sealing: the gradient matrix the label holder sent."""
    fed, _, grads = _first_step(tmp_path)
    clear = from_half(fed.opened_by("tax", grads["tax"], "grad", 0))
    assert _direction_attack(clear, _batch_labels(fed, tmp_path)) > 0.99


def test_the_coordinator_relays_only_ciphertext(tmp_path: Path) -> None:
    fed, embs, grads = _first_step(tmp_path)
    for relayed in (*embs.values(), *grads.values()):
        assert relayed.dtype == np.uint8 and relayed.ndim == 1
        with pytest.raises(ValueError, match="half-precision matrix"):
            from_half(relayed)  # not the wire format: nothing to project
        # Uniform-looking bytes: no byte value is far more common than 1/256 (a float16 matrix's are).
        counts = np.bincount(relayed, minlength=256) / relayed.size
        assert counts.max() < 0.03
    plain = to_half(np.ones((8, fed.job.embedding_dim)))
    assert (
        np.bincount(plain.view(np.uint8).ravel(), minlength=256) / plain.nbytes
    ).max() > 0.2  # the same test on clear bytes


def test_embeddings_of_the_coordinators_making_are_refused(tmp_path: Path) -> None:
    fed, embs, _ = _first_step(tmp_path)
    fed2 = federation(tmp_path / "again", SETS)
    fed2.set_up()
    rows = {a: len(from_half(fed.opened_by(a, e, "emb", 0))) for a, e in embs.items()}
    forged = {a: to_half(np.full((rows[a], fed.job.embedding_dim), 9.0)) for a in embs}
    top = {"step": 0, "order": list(fed2.node_of)}
    with pytest.raises(VerticalFailed, match=r"the emb of step 0 for '(tax|hrss)' is not a sealed array"):
        fed2.relay.send("train.top", {fed2.node_of["civil"]: (top, forged)})


def test_arrays_sealed_under_a_key_of_the_coordinators_are_refused_by_the_label_holder(tmp_path: Path) -> None:
    """Through the label holder's real `top`: well-formed sealed arrays, but under a key the
    coordinator made (it holds neither end's agreement secret)."""
    fed = federation(tmp_path, SETS)
    fed.set_up()
    job = fed.job
    run = str(fed.relay.run_id)
    forged = {
        a: sealed_arrays.seal(
            bytes(32),
            to_half(np.full((64, job.embedding_dim), 9.0)),
            sealed_arrays.Binding(job.job_id, job.digest(), run, "emb", 0, a),
        )
        for a in ("tax", "hrss")
    }
    top = {"step": 0, "order": list(fed.node_of)}
    with pytest.raises(VerticalFailed, match="does not open: not sealed by the other end"):
        fed.relay.send("train.top", {fed.node_of["civil"]: (top, forged)})


def test_a_training_embedding_replayed_as_held_out_is_refused_by_the_label_holder(tmp_path: Path) -> None:
    """Through the label holder's real `evaluate`: the coordinator passes off tax's step-0
    training embedding (sealed by tax, for the label holder) as tax's held-out embeddings."""
    fed, embs, grads = _first_step(tmp_path)
    held_out = _last_steps(fed, grads)
    civil = fed.node_of["civil"]
    replayed = {**held_out, "tax": embs["tax"]}
    with pytest.raises(VerticalFailed, match="the heldout of step 1 for 'tax' does not open"):
        fed.relay.send("evaluate.top", {civil: ({"order": list(fed.node_of)}, replayed)})
    assert (
        "auc" in fed.relay.send("evaluate.top", {civil: ({"order": list(fed.node_of)}, held_out)})[civil].content["cfg"]
    )


def test_a_sealed_array_opens_only_where_and_when_it_was_sealed_for(tmp_path: Path) -> None:
    """Replayed to another node, at another step or in another run, or read with a key the
    coordinator could make itself: none opens."""
    fed, embs, grads = _first_step(tmp_path)
    with pytest.raises(CryptoError, match="does not open"):
        fed.opened_by("hrss", grads["tax"], "grad", 0)  # tax's gradient replayed to hrss
    with pytest.raises(CryptoError, match="does not open"):
        fed.opened_by("tax", grads["tax"], "grad", 1)  # at another step
    with pytest.raises(CryptoError, match="does not open"):
        fed.opened_by("tax", embs["tax"], "heldout", fed.job.rounds)  # a training embedding as held-out
    key, binding = fed.sealing("tax", "grad", 0)
    with pytest.raises(CryptoError, match="does not open"):
        sealed_arrays.open_sealed(key, grads["tax"], replace(binding, run_id="7"))  # in another run
    changed = fed.job.model_copy(update={"rounds": 5}).digest()
    with pytest.raises(CryptoError, match="does not open"):
        sealed_arrays.open_sealed(key, grads["tax"], replace(binding, definition=changed))  # another definition
    own = bytes(32)  # any key of the coordinator's own: it holds neither end's agreement secret
    with pytest.raises(CryptoError, match="does not open"):
        sealed_arrays.open_sealed(own, grads["tax"], binding)


def test_a_tampered_or_malformed_sealed_array_is_refused_not_a_crash(tmp_path: Path) -> None:
    fed, _, grads = _first_step(tmp_path)
    flipped = grads["tax"].copy()
    flipped[-1] ^= 1
    with pytest.raises(CryptoError, match="does not open"):
        fed.opened_by("tax", flipped, "grad", 0)
    with pytest.raises(CryptoError, match="is not a sealed array"):
        fed.opened_by("tax", grads["tax"][:5], "grad", 0)
    with pytest.raises(CryptoError, match="not a float matrix"):
        fed.opened_by("tax", fed.sealed_by("tax", np.zeros(3), "grad", 0), "grad", 0)


def test_no_key_that_opens_the_runs_ciphertext_is_left_on_disk_after_it(tmp_path: Path) -> None:
    """Recorded ciphertext stays sealed after the run: every node has deleted its sealing keys and
    the agreement key that would derive them again."""
    fed, _, grads = _first_step(tmp_path)
    held_out = _last_steps(fed, grads)
    civil = fed.node_of["civil"]
    fed.relay.send("evaluate.top", {civil: ({"order": list(fed.node_of)}, held_out)})
    for agency in fed.node_of:
        cache = tmp_path / agency / "fl-cache" / fed.job.job_id
        run = cache / f"run-{fed.relay.run_id}"
        assert not (run / "psi-agree.key").exists()
        assert not (run / "transport-keys.json").exists()
        assert (run / "psi.key").exists()  # the PSI key is another matter (F20): it derives no sealing key
