"""A coordinator that asks a vertical record-DP node for the same release twice (tried on the
nodes' real ClientApp handlers, tests/clientapp_relay.py).

A feature node noises each training embedding it releases (federated/vertical_dp.py). Asked for
step t again, it would release a fresh noisy copy of the same batch, and the mean of k copies has
its noise cut by √k: the accountant's ε counts each batch's release once. So setup runs once per
run and steps run once each, in order; the label holder's `top` steps likewise. The positive
control measures what averaging buys against the same noise.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from federated import psi, vertical_dp
from federated.admission import LedgerAdmission
from federated.grid_io import arrays_of
from tests.clientapp_relay import Federation, federation
from xgate.errors import VerticalFailed

EVERYONE = [f"pseudonym{i:05d}" for i in range(160)]
SETS = {"civil": EVERYONE[:140], "tax": EVERYONE[10:], "hrss": EVERYONE[5:150]}


def _set_up(tmp_path: Path) -> tuple[Federation, dict[int, dict[str, object]]]:
    """A record-DP job aligned and set up at every node, as the ServerApp does it."""
    fed = federation(tmp_path, SETS, dp=True)
    requests, _ = fed.set_up()
    return fed, requests


def test_a_feature_node_releases_each_steps_embedding_once(tmp_path: Path) -> None:
    fed, _ = _set_up(tmp_path)
    tax = fed.node_of["tax"]
    first = fed.relay.send("train.step", {tax: ({"step": 0, "grad_step": -2}, {})})[tax]
    sealed = arrays_of(first)["emb"]  # for the label holder only (tests/attacks/test_vertical_sealed_relay.py)
    assert sealed.dtype == np.uint8 and sealed.ndim == 1
    with pytest.raises(VerticalFailed, match="step 0 is out of order: this node answered up to step 0"):
        fed.relay.send("train.step", {tax: ({"step": 0, "grad_step": -2}, {})})
    with pytest.raises(VerticalFailed, match="out of order"):  # nor may it be asked past the job's steps
        fed.relay.send("train.step", {tax: ({"step": fed.job.rounds + 5, "grad_step": 0}, {})})


def test_two_copies_of_a_step_delivered_at_once_release_one_embedding(tmp_path: Path) -> None:
    """Two copies of step 0 answered concurrently (two ClientApp processes of one run): the step's
    order check and the save that records it run under the run's lock, so one copy is refused.
    Found by review: without the lock both passed the check and released fresh noise for the same
    batch in 2 of 8 trials."""
    for trial in range(6):
        fed, _ = _set_up(tmp_path / str(trial))
        tax = fed.node_of["tax"]
        outcomes: list[str] = []
        start = threading.Barrier(2)

        def deliver(fed: Federation = fed, tax: int = tax) -> None:
            start.wait()
            try:
                fed.relay.send("train.step", {tax: ({"step": 0, "grad_step": -2}, {})})
                outcomes.append("released")
            except VerticalFailed as refused:
                outcomes.append(refused.message)

        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes.count("released") == 1, outcomes
        assert any("step 0 is out of order" in o for o in outcomes), outcomes


def test_setup_runs_once_so_the_steps_cannot_start_over(tmp_path: Path) -> None:
    fed, requests = _set_up(tmp_path)
    tax = fed.node_of["tax"]
    fed.relay.send("train.step", {tax: ({"step": 0, "grad_step": -2}, {})})
    with pytest.raises(VerticalFailed, match="already answered 'setup' in this run"):
        fed.relay.send("train.setup", {tax: (requests[tax], {})})


def test_the_label_holder_answers_each_top_step_once(tmp_path: Path) -> None:
    fed, _ = _set_up(tmp_path)
    feature_nodes = {a: n for a, n in fed.node_of.items() if a != "civil"}
    embs = {
        a: arrays_of(fed.relay.send("train.step", {n: ({"step": 0, "grad_step": -2}, {})})[n])["emb"]
        for a, n in feature_nodes.items()
    }
    civil = fed.node_of["civil"]
    order = list(fed.node_of)
    top = {"step": 0, "order": order}
    grads = arrays_of(fed.relay.send("train.top", {civil: (top, embs)})[civil])
    assert set(grads) == set(feature_nodes)
    with pytest.raises(VerticalFailed, match="step 0 is out of order"):
        fed.relay.send("train.top", {civil: (top, embs)})


def test_positive_control_averaging_repeated_releases_strips_the_noise() -> None:
    """Had the node answered step 0 again and again, the coordinator would average the copies."""
    n = 120
    plan = vertical_dp.plan(4.0, 1e-6, 1.0, n=n, batch=n, rounds=1, raw_features=1)
    clean = vertical_dp.clip_rows(np.random.default_rng(0).normal(size=(n, 4)), plan.clip)
    rng = np.random.default_rng(1)
    one = vertical_dp.private_embeddings(clean, plan, rng) - clean
    mean = np.mean([vertical_dp.private_embeddings(clean, plan, rng) for _ in range(64)], axis=0) - clean
    assert one.std() == pytest.approx(vertical_dp.embedding_noise_sd(plan), rel=0.1)
    assert mean.std() < one.std() / 6  # 64 copies: the noise shrinks by about 8


def test_the_held_out_release_comes_only_after_every_training_step(tmp_path: Path) -> None:
    """Right after setup the bottom weights are the job's public initial ones: clean held-out
    embeddings then would be the features times a known matrix."""
    fed, _ = _set_up(tmp_path)
    tax = fed.node_of["tax"]
    with pytest.raises(VerticalFailed, match="the last call came before step"):
        fed.relay.send("train.step", {tax: ({"step": fed.job.rounds, "grad_step": 0, "last": True}, {})})


def test_train_and_test_rows_must_not_overlap(tmp_path: Path) -> None:
    """A held-out row is released clean: the coordinator may not name a training row held out."""
    fed = federation(tmp_path, SETS, dp=True)
    alignment, train, test = fed.align()
    tax = fed.node_of["tax"]
    rows = psi.rows_to_bytes(alignment.positions(tax, train))
    cfg = {"train": rows, "test": rows, "label_holder": False, "width": 12}
    with pytest.raises(VerticalFailed, match="train and test rows overlap"):
        fed.relay.send("train.setup", {tax: (cfg, {})})
    assert test


@pytest.mark.parametrize(
    ("step", "grad_step", "with_grad"),
    [(0, -2, True), (0, 0, True), (2, 1, True), (2, 0, False)],  # a gradient where none is due / wrong batch / missing
)
def test_each_step_applies_exactly_the_gradient_its_schedule_says(
    tmp_path: Path, step: int, grad_step: int, with_grad: bool
) -> None:
    """An update on a batch the schedule does not name is a release the accountant did not count."""
    fed, _ = _set_up(tmp_path)
    tax = fed.node_of["tax"]
    for t in range(step):
        fed.relay.send("train.step", {tax: ({"step": t, "grad_step": t - 2}, {})})
    grad = {"grad": np.zeros((8, fed.job.embedding_dim), dtype=np.float16)} if with_grad else {}
    with pytest.raises(VerticalFailed, match=f"step {step}: the gradient of batch {step - 2} is due"):
        fed.relay.send("train.step", {tax: ({"step": step, "grad_step": grad_step}, grad)})


def test_the_label_holder_evaluates_once_and_only_after_training(tmp_path: Path) -> None:
    """Each evaluation counts held-out labels on embeddings the coordinator sends: asked
    again and again, with one embedding changed each time, it would read them out one by one."""
    fed, _ = _set_up(tmp_path)
    civil = fed.node_of["civil"]
    order = {"order": list(fed.node_of)}
    with pytest.raises(VerticalFailed, match="evaluation before the last training step"):
        fed.relay.send("evaluate.top", {civil: (order, {})})
    fed2, _ = _set_up(tmp_path / "second")
    feature_nodes = {a: n for a, n in fed2.node_of.items() if a != "civil"}
    embs = {
        a: arrays_of(fed2.relay.send("train.step", {n: ({"step": 0, "grad_step": -2}, {})})[n])["emb"]
        for a, n in feature_nodes.items()
    }
    civil2 = fed2.node_of["civil"]
    top = fed2.relay.send("train.top", {civil2: ({"step": 0, "order": list(fed2.node_of)}, embs)})[civil2]
    grads = arrays_of(top)  # rounds = 1: the label holder's training is done
    last = {"step": fed2.job.rounds, "grad_step": 0, "last": True}
    test_embs = {
        a: arrays_of(fed2.relay.send("train.step", {n: (last, {"grad": grads[a]})})[n])["emb"]
        for a, n in feature_nodes.items()
    }
    request = {civil2: ({"order": list(fed2.node_of)}, test_embs)}
    assert 0.0 <= float(fed2.relay.send("evaluate.top", request)[civil2].content["cfg"]["auc"]) <= 1.0
    with pytest.raises(VerticalFailed, match="already answered 'evaluate' in this run"):
        fed2.relay.send("evaluate.top", request)


def test_setup_trains_and_holds_out_only_the_aligned_rows(tmp_path: Path) -> None:
    """The coordinator may not add rows outside the intersection (their held-out embeddings would
    be released clean), nor hand the label holder another split than the one it made."""
    fed = federation(tmp_path, SETS, dp=True)
    alignment, train, test = fed.align()
    tax, civil = fed.node_of["tax"], fed.node_of["civil"]
    mine = set(alignment.positions(tax, train + test))
    outside = next(r for r in range(len(SETS["tax"])) if r not in mine)  # a tax subject not aligned
    rows = {
        "train": psi.rows_to_bytes(alignment.positions(tax, train)),
        "test": psi.rows_to_bytes([*alignment.positions(tax, test), outside]),
    }
    with pytest.raises(VerticalFailed, match=f"rows are {len(mine) + 1}, the intersection has {len(mine)}"):
        fed.relay.send("train.setup", {tax: ({**rows, "label_holder": False, "width": 12}, {})})
    swapped = {"train": psi.rows_to_bytes(test), "test": psi.rows_to_bytes(train)}  # the split turned around
    with pytest.raises(VerticalFailed, match="not the split this node made"):
        fed.relay.send("train.setup", {civil: ({**swapped, "label_holder": True, "width": 12}, {})})


def _full_run(fed: Federation) -> dict[int, tuple[dict[str, object], dict[str, np.ndarray]]]:
    """Steps and the last call of a one-round job after `_set_up`; the evaluate request it ends with."""
    feature_nodes = {a: n for a, n in fed.node_of.items() if a != "civil"}
    embs = {
        a: arrays_of(fed.relay.send("train.step", {n: ({"step": 0, "grad_step": -2}, {})})[n])["emb"]
        for a, n in feature_nodes.items()
    }
    civil = fed.node_of["civil"]
    grads = arrays_of(fed.relay.send("train.top", {civil: ({"step": 0, "order": list(fed.node_of)}, embs)})[civil])
    last = {"step": fed.job.rounds, "grad_step": 0, "last": True}
    test_embs = {
        a: arrays_of(fed.relay.send("train.step", {n: (last, {"grad": grads[a]})})[n])["emb"]
        for a, n in feature_nodes.items()
    }
    return {civil: ({"order": list(fed.node_of)}, test_embs)}


def test_another_run_cannot_carry_on_from_this_runs_state(tmp_path: Path) -> None:
    """A coordinator starting a new run and going straight to `step`, `top` or `evaluate` (no setup,
    so no DP charge for the run) finds the state bound to the run that set it up."""
    fed, _ = _set_up(tmp_path)
    request = _full_run(fed)
    fed.relay.run_id = 2
    tax, civil = fed.node_of["tax"], fed.node_of["civil"]
    with pytest.raises(VerticalFailed, match="set up by another run or job definition"):
        fed.relay.send("train.step", {tax: ({"step": 1, "grad_step": -1}, {})})
    with pytest.raises(VerticalFailed, match="set up by another run or job definition"):
        fed.relay.send("train.top", {civil: ({"step": 0, "order": list(fed.node_of)}, {})})
    with pytest.raises(VerticalFailed, match="set up by another run or job definition"):
        fed.relay.send("evaluate.top", request)


def test_a_changed_definition_cannot_continue_the_old_definitions_state(tmp_path: Path) -> None:
    """The analyst resubmits the job id with more rounds (approved and charged once); the
    coordinator sends the extra steps without a setup: each would be a release beyond the old
    definition's accounting, at its noise scale."""
    fed, _ = _set_up(tmp_path)
    _full_run(fed)
    longer = fed.job.model_copy(update={"rounds": 5})
    for agency in fed.node_of:  # every node approves the new definition
        home = tmp_path / agency
        assert LedgerAdmission(home / "ledger.sqlite", home / "store.sqlite")(longer, agency).approved
    fed.relay.job = longer
    tax = fed.node_of["tax"]
    with pytest.raises(VerticalFailed, match="set up by another run or job definition"):
        fed.relay.send("train.step", {tax: ({"step": 3, "grad_step": 1}, {})})


def test_an_honest_rerun_evaluates_and_a_malformed_evaluation_costs_nothing(tmp_path: Path) -> None:
    """A re-run of the job (charged again at the feature nodes) gets its evaluation; an evaluation
    request missing a node's embeddings is refused before the run's one evaluation is taken."""
    fed, _ = _set_up(tmp_path)
    civil = fed.node_of["civil"]
    request = _full_run(fed)
    (cfg, embs) = request[civil]
    with pytest.raises(VerticalFailed, match="held-out embeddings of 'hrss' are None"):
        fed.relay.send("evaluate.top", {civil: (cfg, {a: e for a, e in embs.items() if a != "hrss"})})
    wire = fed.opened_by("hrss", embs["hrss"], "heldout", fed.job.rounds).copy()
    wire[1, 0] = np.nan  # one value (row 0 of the wire format holds the column scales), by a colluding node
    poisoned = {**embs, "hrss": fed.sealed_by("hrss", wire, "heldout", fed.job.rounds)}
    with pytest.raises(VerticalFailed, match="'hrss' hold a value that is not a finite number"):
        fed.relay.send("evaluate.top", {civil: (cfg, poisoned)})
    assert "auc" in fed.relay.send("evaluate.top", request)[civil].content["cfg"]
    fed.relay.run_id = 2  # the whole job again, hello to evaluate
    fed.set_up()
    assert "auc" in fed.relay.send("evaluate.top", _full_run(fed))[civil].content["cfg"]
