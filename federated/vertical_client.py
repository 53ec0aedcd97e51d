"""Vertical ClientApp (Message API): every agency node, the label holder included.

What leaves this node: its pseudonyms hashed and blinded with its secret job key, and the label
holder's blinded list (at the label holder: every other node's) blinded once more, as digests
(private set intersection, federated/psi.py: nobody learns another node's pseudonyms; the
coordinator learns set sizes and the intersection), a masked membership share per label holder
row, the positions of the aligned subjects in its own lists, the dimension of
its encoded features, embeddings of aligned batches, and (label holder only) gradients w.r.t.
other nodes' embeddings, per-step training loss and the final evaluation summary. With
`label_dp` the label holder trains on randomized-response labels (federated/label_dp.py), so its
gradients and losses are label-DP. With record-level `dp`, a feature node's training embeddings
and bottom updates are clipped per record and noised (federated/vertical_dp.py), its accountant's
epsilon recorded in its ledger before its first release. A stacked job (`vertical_scheme`)
exchanges instead, once, the training labels (label holder to each feature node, sealed; under
`label_dp` the randomized-response ones) and each feature node's held-out scores from its own
part, trained on them (DP-SGD under record-level `dp`, federated/dp_sgd.py). Raw features and
model weights never leave, nor labels outside a stacked job; training state (and the job's PSI
key) lives in a node-local cache next to the ledger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import secrets
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from crypto import keyed_draws, sealed_arrays
from federated import (
    datasets,
    dp_sgd,
    label_dp,
    model,
    node,
    node_keys,
    psi,
    psi_keys,
    psi_pool,
    top_calibration,
    vertical_dp,
)
from federated.admission import admit_at_node, record_dp_plan
from federated.grid_io import arrays_of, cfg_of
from federated.guarded_app import GuardedClientApp
from federated.jobs import DPUnit, JobSpec, Mode, VerticalScheme, job_from_run_config, require_mode
from federated.run_releases import RunReleases
from federated.vertical import (
    RIDGE,
    Bottom,
    Top,
    batch_indices,
    from_half,
    pack_state,
    preconditioner,
    to_half,
    unpack_state,
)
from xgate.errors import InvalidInput

# Guarded: a failure reaches the coordinator as an XgateError's public message only (federated/guarded_app.py).
app = GuardedClientApp()


def _setup(context: Context) -> tuple[JobSpec, node.NodeConfig, Path]:
    job = job_from_run_config(dict(context.run_config))
    require_mode(job, Mode.VERTICAL)  # before anything is read or charged
    nc = node.node_config(dict(context.node_config))
    # Always: the run config is the coordinator's to write, so nothing in it turns admission off.
    admit_at_node(job, nc.agency, nc.ledger, nc.store, nc.policy_dir, nc.policy_ca)
    cache = nc.ledger.parent / "fl-cache" / job.job_id
    cache.mkdir(parents=True, exist_ok=True)
    return job, nc, cache


def _reply(msg: Message, cfg: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None) -> Message:
    rd = RecordDict({"cfg": ConfigRecord(cfg or {})})
    if arrays:
        rd["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return Message(rd, reply_to=msg)


def _load(cache: Path) -> dict[str, np.ndarray]:
    """Aligned encoded data (written once at setup) plus the current parameters."""
    out: dict[str, np.ndarray] = {}
    for name in ("data.npy.npz", "params.npz"):
        with np.load(cache / name, allow_pickle=False) as data:
            out.update({k: data[k] for k in data.files})
    return out


def _save(cache: Path, state: dict[str, np.ndarray], *, data: bool = False) -> None:
    name = "data.npy.npz" if data else "params.npz"
    tmp = cache / f"tmp-{secrets.token_hex(8)}-{name}"  # its own: a concurrent save never shares it
    np.savez(tmp, **state)  # type: ignore[arg-type]
    tmp.replace(cache / name)


def _add_params(cache: Path, **arrays: np.ndarray) -> None:
    """These arrays beside the parameters already saved."""
    with np.load(cache / "params.npz", allow_pickle=False) as saved:
        params = {k: saved[k] for k in saved.files}
    _save(cache, {**params, **arrays})


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """What this node offers, and its pseudonyms hashed and blinded with a fresh job key (PSI)."""
    job, nc, cache = _setup(context)
    _once(cache, context, "hello")  # a second hello would re-key and re-order this run's lists
    run = _run_dir(cache, context)
    held = node.held_features(job, nc)
    has_label = _holds_label(job, nc)
    tags = agree = b""
    if held or has_label:
        order = datasets.pseudonyms(nc.store)
        secrets.SystemRandom().shuffle(order)  # list positions reveal nothing about the pseudonyms
        key, agreement = psi.new_key(), psi.new_key()
        node_keys.write_private(run / "psi.key", key)
        node_keys.write_private(run / "psi-agree.key", agreement)
        (run / "psi-order.txt").write_text("\n".join(order))
        tags = psi.first_tags(key, job.job_id, order)
        (run / "psi-hello.sha256").write_bytes(_sha(tags))  # bound into the sealed seed
        agree = psi.agreement_public(agreement)
    signed = psi_keys.statement_fields(job.job_id, nc.agency, agree, tags, psi_keys.identity_of(nc)) if agree else {}
    digest = node_keys.data_digest(nc.store, nc.ledger, job.elements())  # attested, keyed
    (run / HELLO_DATA).write_text(digest)  # setup trains on this data or refuses
    reply = {"agency": nc.agency, "features": held, "has_label": has_label, "tags": tags, "agree": agree, **signed}
    return _reply(msg, {**reply, "data_sha256": digest})


def _holds_label(job: JobSpec, nc: node.NodeConfig) -> bool:
    return job.label in datasets.held_elements(nc.store) and nc.agency == job.label_holder


@app.train("blind")
def blind(msg: Message, context: Context) -> Message:
    """PSI: apply this node's job key, last, to other parties' blinded lists. Another node keeps
    the label holder's list so finished (nothing goes back but its length). The label holder
    returns each node's list in a fresh secret order, so that nobody, that node included, can tell
    which of that node's subjects the label holder holds until the split names the aligned ones;
    and it seals a fresh group seed to each node for the membership shares (federated/psi.py), once
    it has checked their agreement keys, and for their roster. Once per run."""
    job, nc, cache = _setup(context)
    cfg = cfg_of(msg)
    _once(cache, context, "blind")
    run = _run_dir(cache, context)
    key = (run / "psi.key").read_bytes()
    if not _holds_label(job, nc):
        (label_list,) = [bytes(tags) for tags in cfg["tags"]]
        psi.check_tags(label_list)
        if len(set(psi.split(label_list))) != psi.count(label_list):  # one row repeated tests it against all
            raise ValueError("the label holder's list names a subject twice")
        (run / "psi-label-hello.sha256").write_bytes(_sha(label_list))
        label_side = psi.finish(key, label_list)
        node_keys.write_private(run / "psi-label-side.bin", label_side)
        return _reply(msg, {"finished": psi.count(label_side, psi.MATCH_BYTES)})
    # The keys it will seal to are checked before any work (federated/psi_keys.py).
    agreement = (run / "psi-agree.key").read_bytes()
    statements = psi_keys.relayed(cfg)
    trust = psi_keys.trust_of(nc)
    peers = psi_keys.peer_keys(job.job_id, statements, job.label_holder, trust, job.min_nodes - 1)
    lists = [bytes(tags) for tags in cfg["tags"]]
    psi_keys.check_lists(statements, lists)  # each the list its node signed: no candidates in its place
    for tags in lists:
        psi.check_tags(tags)
    roster = psi_keys.roster(job.job_id, nc.agency, psi.agreement_public(agreement), statements)
    transport = {
        st.agency: psi.transport_key(agreement, k, job.job_id) for st, k in zip(statements, peers, strict=True)
    }
    _keep_transport_keys(cache, context, transport)
    if trust is not None:  # the verified certificates that must sign the aligned rows at `align`
        peers_file = run / PEER_CERTIFICATES
        peers_file.write_text(json.dumps([[st.agency, st.certificate.decode()] for st in statements]))
    # K - 1 lists here, one at each other node: over its cores, within the round the coordinator waits
    finished = psi_pool.finish_lists(key, lists, timeout_s=job.round_timeout_s)
    orders = [psi.new_order(psi.count(f, psi.MATCH_BYTES)) for f in finished]
    buffer = io.BytesIO()
    np.savez(buffer, *orders)
    node_keys.write_private(run / "psi-orders.npz", buffer.getvalue())
    finished = [psi.reorder(f, order) for f, order in zip(finished, orders, strict=True)]
    # Each seed is sealed for the roster and for the lists as they left and reached this node: the
    # coordinator cannot hand a node another list as the label holder's, or another returned list.
    own = (run / "psi-hello.sha256").read_bytes()
    contexts = [
        psi.seal_context(roster, own, _sha(sent), _sha(back)) for sent, back in zip(lists, finished, strict=True)
    ]
    seeds = psi.sealed_group_seed(agreement, job.job_id, peers, contexts)
    _forget_agreement_key(run)
    return _reply(msg, {"matches": finished, "seeds": seeds, "keys_checked": trust is not None})


def _forget_agreement_key(run: Path) -> None:
    """After its last use (the label holder's `blind`, another node's `membership`): left on disk, it
    would re-derive this run's sealing keys (`psi.transport_key`) after they are deleted."""
    (run / "psi-agree.key").unlink(missing_ok=True)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _run_dir(cache: Path, context: Context) -> Path:
    """This run's own directory: its PSI keys, lists, orders and split never meet another run's,
    so two runs of one job (a coordinator may start them at once) cannot mix their alignments."""
    run = cache / f"run-{context.run_id}"
    run.mkdir(parents=True, exist_ok=True)
    return run


def _once(cache: Path, context: Context, step: str) -> None:
    """A step runs once per run of a job at a node: asked again (with other lists, another roster,
    for a release it already made) it would hand the coordinator a second, different answer to
    combine with the first. A job resubmitted later is a new run and starts over from hello."""
    RunReleases(_run_dir(cache, context)).once(step)


@app.train("membership")
def membership(msg: Message, context: Context) -> Message:
    """PSI, another node: match its own list as the label holder returned it against the label
    holder's list as it finished it, and answer with its masked membership share; the matches stay
    here for `partners`."""
    job, nc, cache = _setup(context)
    cfg = cfg_of(msg)
    _once(cache, context, "membership")
    run = _run_dir(cache, context)
    trust = psi_keys.trust_of(nc)
    label_key = psi_keys.label_key(job.job_id, psi_keys.relayed(cfg, "label_"), job.label_holder, trust)
    agreement = (run / "psi-agree.key").read_bytes()
    _keep_transport_keys(cache, context, {job.label_holder: psi.transport_key(agreement, label_key, job.job_id)})
    statements = psi_keys.relayed(cfg)
    peers = psi_keys.peer_keys(job.job_id, statements, job.label_holder, trust, job.min_nodes - 1)
    matched, share = psi.membership(
        agreement,
        job.job_id,
        (run / "psi-label-side.bin").read_bytes(),
        bytes(cfg["matches"]),
        bytes(cfg["seed"]),
        label_key,
        peers,
        int(cfg["index"]),
        psi.seal_context(
            psi_keys.roster(job.job_id, job.label_holder, label_key, statements),
            (run / "psi-label-hello.sha256").read_bytes(),
            (run / "psi-hello.sha256").read_bytes(),
            _sha(bytes(cfg["matches"])),
        ),
    )
    buffer = io.BytesIO()
    np.save(buffer, matched)
    node_keys.write_private(run / "psi-matches.npy", buffer.getvalue())
    _forget_agreement_key(run)
    return _reply(msg, {"share": share, "keys_checked": trust is not None})


@app.train("partners")
def aligned_positions(msg: Message, context: Context) -> Message:
    """PSI, another node: where the aligned subjects sit in the list the label holder returned,
    signed with the aligned rows asked about (the label holder translates nothing else)."""
    job, nc, cache = _setup(context)
    _once(cache, context, "partners")
    run = _run_dir(cache, context)
    matched = np.load(run / "psi-matches.npy", allow_pickle=False)
    aligned = bytes(cfg_of(msg)["aligned"])
    rows = psi.partner_rows(matched, aligned)
    (run / "psi-aligned.count").write_text(str(psi.count(rows, psi.ROW_BYTES)))  # what setup may train and hold out
    identity = psi_keys.identity_of(nc)
    signature = psi_keys.rows_signature(job.job_id, context.run_id, nc.agency, aligned, rows, identity)
    return _reply(msg, {"rows": rows, "rows_sig": signature})


def _pseudonyms_at(run: Path, rows: bytes) -> tuple[list[int], list[str]]:
    """Positions in the list this node sent at hello, and its pseudonyms there."""
    text = (run / "psi-order.txt").read_text()
    order = text.split("\n") if text else []
    positions = psi.rows_from_bytes(rows, len(order))
    return positions, [order[r] for r in positions]


def _partner_positions(run: Path, partners: list[bytes], aligned: int) -> list[bytes]:
    """Label holder: for each other node, the aligned subjects' positions in the list that node
    sent, from their positions in the order this node gave that list at `blind`; exactly `aligned`
    of them (more would have it undo its secret order for subjects outside the intersection), and
    (checked by the caller) each node's signature over them."""
    with np.load(run / "psi-orders.npz", allow_pickle=False) as data:
        orders = [data[f"arr_{i}"] for i in range(len(data.files))]
    if len(partners) != len(orders):
        raise ValueError(f"{len(partners)} nodes' aligned rows for {len(orders)} blinded lists")
    if any(len(bytes(rows)) != psi.ROW_BYTES * aligned for rows in partners):
        raise ValueError(f"aligned rows of another node that are not {aligned} positions")
    return [psi.unshuffle(bytes(rows), order) for rows, order in zip(partners, orders, strict=True)]


@app.train("align")
def align(msg: Message, context: Context) -> Message:
    """Label holder: split the aligned subjects into train/test (its holdout rule), as positions,
    and translate every other node's aligned rows back into that node's own positions."""
    job, nc, cache = _setup(context)
    cfg = cfg_of(msg)
    _once(cache, context, "align")
    run = _run_dir(cache, context)
    positions, aligned = _pseudonyms_at(run, bytes(cfg["aligned"]))
    test = node.is_holdout(aligned, job, nc.holdout)
    node.check_split(test, nc.holdout)
    train = [r for r, held_out in zip(positions, test, strict=True) if not held_out]
    held = [r for r, held_out in zip(positions, test, strict=True) if held_out]
    reply: dict[str, Any] = {"train": psi.rows_to_bytes(train), "test": psi.rows_to_bytes(held)}
    (run / "psi-split.sha256").write_bytes(_split_digest(reply["train"], reply["test"]))  # setup must get this
    if "partners" in cfg:  # absent when the label holder is the only participant
        partners = [bytes(rows) for rows in cfg["partners"]]
        peers_file = run / PEER_CERTIFICATES
        if peers_file.exists():  # with the CA: only rows every other node signed, each its own answer
            peers = [(str(a), str(c).encode()) for a, c in json.loads(peers_file.read_text())]
            aligned_rows = bytes(cfg["aligned"])
            psi_keys.check_partners(job.job_id, context.run_id, peers, aligned_rows, partners, cfg.get("partner_sigs"))
        reply["partners"] = _partner_positions(run, partners, len(positions))
    return _reply(msg, reply)


def _check_unchanged(cache: Path, context: Context, job: JobSpec, nc: node.NodeConfig) -> None:
    """The data setup reads is the data this node attested and aligned at hello: a dataset reloaded
    in between would train on other values under the alignment (and digest) of the old ones."""
    attested = _run_dir(cache, context) / HELLO_DATA
    if not attested.exists() or attested.read_text() != node_keys.data_digest(nc.store, nc.ledger, job.elements()):
        raise ValueError(
            f"agency '{nc.agency}''s data changed since this run's alignment (reloaded?): run the job again"
        )


def _check_split(run: Path, job: JobSpec, nc: node.NodeConfig, train: bytes, test: bytes) -> None:
    """The label holder trains on exactly the split it made at `align`; another node on as many rows
    as were aligned at `partners` (which of its rows they are, only the label holder's translation
    says), so the coordinator cannot add rows outside the intersection to what it trains or holds out."""
    if _holds_label(job, nc):
        if (run / "psi-split.sha256").read_bytes() != _split_digest(train, test):
            raise ValueError("the coordinator's train/test rows are not the split this node made")
        return
    aligned = int((run / "psi-aligned.count").read_text())
    given = psi.count(train, psi.ROW_BYTES) + psi.count(test, psi.ROW_BYTES)
    if given != aligned:
        raise ValueError(f"the coordinator's train/test rows are {given}, the intersection has {aligned}")


def _split_digest(train: bytes, test: bytes) -> bytes:
    """Each half hashed on its own: moving rows across the boundary changes the digest."""
    return _sha(train) + _sha(test)


@app.train("setup")
def setup(msg: Message, context: Context) -> Message:
    job, nc, path = _setup(context)
    cfg = cfg_of(msg)
    _once(path, context, "setup")  # a second setup would restart the steps (see `_next_step`)
    run = _run_dir(path, context)
    train_rows, train = _pseudonyms_at(run, bytes(cfg["train"]))
    test_rows, test = _pseudonyms_at(run, bytes(cfg["test"]))
    if set(train_rows) & set(test_rows):  # a held-out row is released clean: never one it trains on
        raise ValueError("the coordinator's train and test rows overlap")
    _check_split(run, job, nc, bytes(cfg["train"]), bytes(cfg["test"]))
    _check_unchanged(path, context, job, nc)
    feats = node.held_features(job, nc)
    infos = datasets.element_info(nc.store, feats)
    # Decided here from the job and the store, never from the coordinator's word: a feature node
    # told it is the label holder would otherwise release its embeddings without noise.
    label_holder = _holds_label(job, nc)
    if bool(cfg.get("label_holder", False)) != label_holder:
        raise ValueError(f"the coordinator's label_holder={cfg.get('label_holder')} is wrong for this node")
    if label_holder:
        node.check_label(datasets.element_info(nc.store, [job.label])[0])
    # One read of every element for all aligned rows (a read scans an element's whole column).
    _, raw = datasets.read_matrix(nc.store, [*feats, *([job.label] if label_holder else [])], train + test)
    raw_tr, raw_te = raw[: len(train), : len(feats)], raw[len(train) :, : len(feats)]
    # Standardisation statistics come from this node's own training rows and never leave it (never in
    # a record-DP job, which jobs.py refuses: one record would move every row's encoding).
    encs = model.resolve(infos, job.encodings)
    stats = model.fit_stats(infos, encs, raw_tr)
    x_tr, x_te = model.encode(infos, raw_tr, encs, stats), model.encode(infos, raw_te, encs, stats)
    bottom = Bottom.init(x_tr.shape[1], job.embedding_dim, job.seed, nc.agency)
    data = {
        "x_train": x_tr.astype(np.float32),
        "x_test": x_te.astype(np.float32),
        # The state belongs to this run and definition: steps, top and evaluate of any other refuse it.
        "run": np.asarray(str(context.run_id)),
        "digest": np.asarray(job.digest()),
    }
    state = pack_state("b_", bottom.w, bottom.opt_state)
    metrics: dict[str, Any] = {}
    if private_releases(job, label_holder):
        plan = stacked_plan(job, len(train)) if stacked(job) else dp_plan(job, len(train), len(feats))
        # The accountant's epsilon goes into the node's ledger before its first release.
        record_dp_plan(nc.ledger, job, run_id=str(context.run_id), **plan.ledger_entry())
        metrics = {"agency": nc.agency, **plan.as_metrics()}
        if isinstance(plan, dp_sgd.Plan):  # a stacked part's DP-SGD schedule
            data["part_plan"] = np.asarray(json.dumps(dataclasses.asdict(plan)))
        else:
            data["precond"] = vertical_dp.private_preconditioner(x_tr, plan)
            data["dp_plan"] = plan.as_array()  # each step's noise, calibrated once
    elif not stacked(job):
        data["precond"] = preconditioner(x_tr, RIDGE)
    if label_holder:
        lab_tr, lab_te = raw[: len(train), len(feats) :], raw[len(train) :, len(feats) :]
        if np.isnan(lab_tr).any() or np.isnan(lab_te).any():
            raise InvalidInput(
                f"the label '{job.label}' is empty for some of the subjects this job aligned: mark it"
                " required in the dataset's mapping (rows without it are then refused at load) or fill it in"
            )
        width = int(cfg["width"])
        # Under label_dp the held-out labels are released like the training ones (the same keyed
        # flips): the evaluation counts them, on embeddings the coordinator sends.
        y_train = training_labels(job, lab_tr[:, 0] > 0, label_words(nc, job, train))
        y_test = training_labels(job, lab_te[:, 0] > 0, label_words(nc, job, test))
        data.update(y_train=y_train, y_test=y_test)
        if job.top_calibration is not None:  # which held-out rows the top is fitted on, by pseudonym
            data["calibration"] = top_calibration.calibration_rows(test, job.top_calibration, job.seed)
        if private_releases(job, False) and not stacked(job):  # the others' embeddings will arrive noised by this much
            data["noise_sd"] = np.asarray(vertical_dp.embedding_noise_sd(dp_plan(job, len(train), 1)))
        state.update(pack_state("t_", np.zeros(width + 1), {}))
    _save(path, data, data=True)
    _save(path, state)
    return _reply(msg, {"dim": int(x_tr.shape[1]), **metrics})


def stacked(job: JobSpec) -> bool:
    return job.vertical_scheme is VerticalScheme.STACKED


def stacked_plan(job: JobSpec, n_train: int) -> dp_sgd.Plan:
    """A stacked feature node's DP-SGD schedule for its part: `local_epochs` epochs over its aligned
    training rows, whose count alignment made public (so no noisy count is released or accounted)."""
    assert job.dp is not None
    try:
        return dp_sgd.plan(
            job.dp.epsilon,
            job.dp.delta,
            job.dp.clip,
            rows=float(n_train),
            batch=job.batch_size,
            rounds=1,
            local_epochs=job.local_epochs,
            count_sigma=None,
        )
    except ValueError as exc:  # a delta too large for the aligned rows, an epsilon out of reach
        raise InvalidInput(str(exc)) from None


def private_releases(job: JobSpec, label_holder: bool) -> bool:
    """Whether this node's embeddings and updates are record-level DP: a feature node of a DP job."""
    return job.dp is not None and job.dp.unit is DPUnit.RECORD and not label_holder


def dp_plan(job: JobSpec, n_train: int, raw_features: int) -> vertical_dp.Plan:
    """This feature node's noise for the job, calibrated to the job's epsilon over its releases."""
    assert job.dp is not None
    try:
        return vertical_dp.plan(
            job.dp.epsilon,
            job.dp.delta,
            job.dp.clip,
            n=n_train,
            batch=job.batch_size,
            rounds=job.rounds,
            raw_features=raw_features,
        )
    except ValueError as exc:  # a delta too large for the aligned rows: the analyst's to change, so say why
        raise InvalidInput(str(exc)) from None


def _wire(x: np.ndarray) -> np.ndarray:
    """Embeddings and gradients travel as float16 with a power-of-two scale per column (a quarter
    of float64's bytes, federated/vertical.py `to_half`); computed in float64."""
    return to_half(x)


def _unwire(x: np.ndarray) -> np.ndarray:
    return from_half(x)


# Embeddings and gradients are sealed end to end between each feature node and the label holder
# (crypto/sealed_arrays.py), under keys agreed at PSI from their certified job keys: the
# coordinator relays ciphertext. Each node keeps the keys of this run: {agency: key hex}.
TRANSPORT_KEYS = "transport-keys.json"
HELLO_DATA = "hello-data.sha256"  # per run: the data digest the node attested at hello
# The label holder's record, per run, of the other nodes' certificates it verified at `blind`:
# [[agency, PEM], ...] in the order of their lists.
PEER_CERTIFICATES = "peer-certificates.json"


def _keep_transport_keys(cache: Path, context: Context, keys: dict[str, bytes]) -> None:
    """This run's keys, in the run's own directory (replaced atomically: concurrent runs of a job
    never see each other's, nor a half-written file)."""
    run_dir = _run_dir(cache, context)
    tmp = run_dir / f".{TRANSPORT_KEYS}.{secrets.token_hex(8)}"
    node_keys.write_private(tmp, json.dumps({a: k.hex() for a, k in keys.items()}).encode())
    os.replace(tmp, run_dir / TRANSPORT_KEYS)


def _transport_key(cache: Path, context: Context, agency: str) -> bytes:
    """The key this node agreed with `agency` (the label holder, or at the label holder a feature
    node) in this run's alignment."""
    path = _run_dir(cache, context) / TRANSPORT_KEYS
    keys = json.loads(path.read_text()) if path.exists() else {}
    if agency not in keys:
        raise ValueError(f"no sealing key agreed with '{agency}' in this run's alignment")
    return bytes.fromhex(keys[agency])


def _forget_transport_keys(cache: Path, context: Context) -> None:
    """After this node's last sealed exchange of the run: a key kept on disk would open the run's
    recorded ciphertext later."""
    (_run_dir(cache, context) / TRANSPORT_KEYS).unlink(missing_ok=True)


def _binding(job: JobSpec, context: Context, kind: str, step: int, agency: str) -> sealed_arrays.Binding:
    """What a sealed array of this run is bound to; `agency` is always the feature node's."""
    return sealed_arrays.Binding(job.job_id, job.digest(), str(context.run_id), kind, step, agency)


def _seal(key: bytes, x: np.ndarray, job: JobSpec, context: Context, kind: str, step: int, agency: str) -> np.ndarray:
    """`x` on the wire (`_wire`), sealed for the other end."""
    return sealed_arrays.seal(key, _wire(x), _binding(job, context, kind, step, agency))


def _open(
    key: bytes, sealed: np.ndarray, job: JobSpec, context: Context, kind: str, step: int, agency: str
) -> np.ndarray:
    return _unwire(sealed_arrays.open_sealed(key, sealed, _binding(job, context, kind, step, agency)))


def training_labels(job: JobSpec, y: np.ndarray, words: np.ndarray | None) -> np.ndarray:
    """The labels the label holder trains on (everything sent later derives from these): under
    `label_dp`, randomized response decided by `words` (`label_words`), else the true labels."""
    y = np.asarray(y, dtype=np.float64)
    if job.label_dp is None:
        return y
    if words is None:
        raise ValueError("a label_dp job needs the label holder's draws")
    return label_dp.randomized_response(y, job.label_dp, words)


def label_words(nc: node.NodeConfig, job: JobSpec, pseudonyms: list[str]) -> np.ndarray | None:
    """The label holder's draws for these subjects' flips: keyed by its own secret and named by
    (label element, ε), so every run and job on these labels at this ε flips the same ones and a
    re-run cannot average the flips away (federated/label_dp.py)."""
    if job.label_dp is None:
        return None
    key = node_keys.node_key(nc.ledger, node_keys.LABEL_DP_KEY)
    return keyed_draws.words(key, label_dp.release_domain(job.label, job.label_dp), pseudonyms)


@app.train("step")
def step(msg: Message, context: Context) -> Message:
    """Feature node: apply the gradient of batch t-2, return embeddings of batch t (one message of a
    run at a time: `_next_step` and the save that records it under the run's lock)."""
    job, nc, path = _setup(context)
    with RunReleases(_run_dir(path, context)).exclusive():
        return _step(msg, context, job, nc, path)


def _step(msg: Message, context: Context, job: JobSpec, nc: node.NodeConfig, path: Path) -> Message:
    """Feature node: apply the gradient of batch t-2, return embeddings of batch t.

    Pipelined with the label holder, which works on batch t-1 in the same Flower round, so one
    message round trip per step; the embeddings of batch t thus miss one update (staleness 1).
    The last call (`last`) applies the final gradient and returns held-out embeddings instead.
    """
    if _holds_label(job, nc):
        raise ValueError("the label holder trains its bottom in 'top', not in 'step'")
    st = _load(path)
    _check_run(st, job, context)
    cfg = cfg_of(msg)
    n = len(st["x_train"])
    bottom = Bottom(*unpack_state("b_", st))
    t = int(cfg["step"])
    last = bool(cfg.get("last", False))
    done = _next_step(st, job.rounds + 1 if last else t, job.rounds + 1)  # the last call comes after step `rounds`
    # The schedule is fixed by the job: step t applies the gradient of batch t-2, the last call that
    # of batch rounds-1, and only after every step (its held-out embeddings are released clean).
    due = job.rounds - 1 if last else t - 2
    received = arrays_of(msg)
    if last and _steps_done(st) != _final_step(job.rounds):
        raise ValueError(f"the last call came before step {_final_step(job.rounds)} was answered")
    if (due >= 0) != ("grad" in received) or ("grad" in received and int(cfg["grad_step"]) != due):
        raise ValueError(f"step {t}: the gradient of batch {due} is due, not {cfg.get('grad_step')}")
    plan = None
    if private_releases(job, False):  # required, not inferred from what setup left behind
        if "dp_plan" not in st:
            raise ValueError("record-level DP job without this node's DP plan: was setup run?")
        plan = vertical_dp.Plan.from_array(st["dp_plan"])
    key = _transport_key(path, context, job.label_holder)
    if "grad" in received:
        grad = _open(key, received["grad"], job, context, "grad", due, nc.agency)
        x_prev = st["x_train"][batch_indices(n, job.batch_size, due, job.seed)]
        if plan is None:
            bottom.backward(x_prev, grad, job.learning_rate, st["precond"])
        else:
            bottom.apply(vertical_dp.private_update(x_prev, grad, plan), job.learning_rate, st["precond"])
    out: dict[str, np.ndarray] = {}
    if last:
        # Held-out rows are never trained on: their embeddings are clipped as in training, not noised.
        e_test = bottom.forward(st["x_test"])
        e_test = e_test if plan is None else vertical_dp.clip_rows(e_test, plan.clip)
        out["emb"] = _seal(key, e_test, job, context, "heldout", job.rounds, nc.agency)
    elif t < job.rounds:
        e = bottom.forward(st["x_train"][batch_indices(n, job.batch_size, t, job.seed)])
        e = e if plan is None else vertical_dp.private_embeddings(e, plan)
        out["emb"] = _seal(key, e, job, context, "emb", t, nc.agency)
    _save(path, {**pack_state("b_", bottom.w, bottom.opt_state), "steps_done": np.asarray(done)})
    if last:
        _forget_transport_keys(path, context)
    return _reply(msg, {"bottom_sha256": hashlib.sha256(bottom.w.tobytes()).hexdigest()}, out)


def _check_run(st: dict[str, np.ndarray], job: JobSpec, context: Context) -> None:
    """Steps, top and evaluate work only on the state this run's own setup made for this very job
    definition. Otherwise a new run (or a changed definition under the same job id) could carry on
    from another run's state without a setup, so without this run's DP charge, and ask again for
    what that run had already released."""
    if str(st.get("run", "")) != str(context.run_id) or str(st.get("digest", "")) != job.digest():
        raise ValueError("this node's training state was set up by another run or job definition: run setup first")


def _steps_done(st: dict[str, np.ndarray]) -> int:
    return int(st["steps_done"]) if "steps_done" in st else -1


def _final_step(rounds: int) -> int:
    """The feature nodes' last step before the final call: `rounds` (which applies the gradient of
    batch rounds-2), or 0 in a one-round job, which has no such step (vertical_server.run_vertical)."""
    return rounds if rounds >= 2 else 0


def _next_step(st: dict[str, np.ndarray], t: int, most: int) -> int:
    """Steps run once each, in order (0 .. most): asked again for a step it answered, a feature
    node would release a fresh noisy embedding of the same batch, and averaging the releases takes
    the DP noise away."""
    done = _steps_done(st)
    if not done < t <= most:
        raise ValueError(f"step {t} is out of order: this node answered up to step {done} of {most}")
    return t


@app.train("top")
def top(msg: Message, context: Context) -> Message:
    """Label holder: own bottom + top model step; returns dL/dE for each other node's embedding
    (one message of a run at a time, as `step`)."""
    job, nc, path = _setup(context)
    with RunReleases(_run_dir(path, context)).exclusive():
        return _top(msg, context, job, nc, path)


def _top(msg: Message, context: Context, job: JobSpec, nc: node.NodeConfig, path: Path) -> Message:
    st = _load(path)
    _check_run(st, job, context)
    t = _next_step(st, int(cfg_of(msg)["step"]), job.rounds - 1)
    order = [str(a) for a in cfg_of(msg)["order"]]
    n = len(st["x_train"])
    idx = batch_indices(n, job.batch_size, t, job.seed)
    bottom, topm = Bottom(*unpack_state("b_", st)), Top(*unpack_state("t_", st))
    received = arrays_of(msg)
    keys = {a: _transport_key(path, context, a) for a in order if a != nc.agency}
    embs = [
        bottom.forward(st["x_train"][idx]) if a == nc.agency else _open(keys[a], received[a], job, context, "emb", t, a)
        for a in order
    ]
    e = np.hstack(embs)
    loss, grad_e = topm.step(e, st["y_train"][idx], job.l2, job.embedding_dim)
    h = job.embedding_dim
    grads = {a: grad_e[:, i * h : (i + 1) * h] for i, a in enumerate(order)}
    bottom.backward(st["x_train"][idx], grads.pop(nc.agency), job.learning_rate, st["precond"])
    state = {**pack_state("b_", bottom.w, bottom.opt_state), **pack_state("t_", topm.w, topm.opt_state)}
    if "noise_sd" in st:  # the other nodes' embeddings arrive noised, by the same sd at every feature node
        sd = float(st["noise_sd"])
        noise_sd = np.repeat([0.0 if a == nc.agency else sd for a in order], h)
        state["reliability"] = vertical_dp.reliability(e, noise_sd)
    _save(path, {**state, "steps_done": np.asarray(t)})
    sealed = {a: _seal(keys[a], g, job, context, "grad", t, a) for a, g in grads.items()}
    return _reply(msg, {"loss": loss, "batch": len(idx)}, sealed)


@app.train("labels")
def labels(msg: Message, context: Context) -> Message:
    """Label holder of a stacked job: trains its own part, then sends each feature node the
    training labels it trained on (sealed to that node; randomized response under `label_dp`)."""
    job, nc, path = _setup(context)
    return _labels(msg, context, job, nc, path)  # `_once` claims the release under the run's lock


def _labels(msg: Message, context: Context, job: JobSpec, nc: node.NodeConfig, path: Path) -> Message:
    if not stacked(job):
        raise ValueError("only a stacked job sends its training labels to the feature nodes")
    if not _holds_label(job, nc):
        raise ValueError("only the label holder sends the training labels")
    st = _load(path)
    _check_run(st, job, context)
    RunReleases(_run_dir(path, context)).refuse_if_claimed("labels")  # before the keys, gone after evaluate
    order = [str(a) for a in cfg_of(msg)["order"]]
    if len(set(order)) != len(order) or nc.agency not in order:
        raise ValueError("the agency order must list each agency once, this node among them")
    keys = {a: _transport_key(path, context, a) for a in order if a != nc.agency}
    _once(path, context, "labels")
    x, y = st["x_train"].astype(np.float64), st["y_train"]
    part = _fit_part(job, x, y, None)
    _add_params(path, part=part, steps_done=np.asarray(job.rounds - 1))
    sealed = {a: _seal(k, y[:, None], job, context, "labels", 0, a) for a, k in keys.items()}
    return _reply(msg, {"loss": _log_loss(part, x, y), "batch": len(y)}, sealed)


@app.train("fit")
def fit(msg: Message, context: Context) -> Message:
    """Feature node of a stacked job: trains its part on the label holder's training labels (DP-SGD
    under record-level `dp`), returns its held-out rows' scores, sealed to the label holder."""
    job, nc, path = _setup(context)
    return _fit(msg, context, job, nc, path)  # `_once` claims the release under the run's lock


def _fit(msg: Message, context: Context, job: JobSpec, nc: node.NodeConfig, path: Path) -> Message:
    if not stacked(job):
        raise ValueError("only a stacked job fits its parts in one exchange")
    if _holds_label(job, nc):
        raise ValueError("the label holder trains its part in 'labels', not in 'fit'")
    st = _load(path)
    _check_run(st, job, context)
    RunReleases(_run_dir(path, context)).refuse_if_claimed("fit")  # its sealing key is gone after the first
    received = arrays_of(msg)
    if "labels" not in received:
        raise ValueError("a stacked part is fitted on the label holder's training labels, and none came")
    key = _transport_key(path, context, job.label_holder)
    y = _open(key, received["labels"], job, context, "labels", 0, nc.agency)
    n = len(st["x_train"])
    if y.shape != (n, 1) or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"the training labels must be {n} values of 0 or 1, one per aligned training row")
    _once(path, context, "fit")  # claimed only for well-formed labels: a bad request costs nothing
    plan = dp_sgd.Plan(**json.loads(str(st["part_plan"]))) if private_releases(job, False) else None
    part = _fit_part(job, st["x_train"].astype(np.float64), y[:, 0], plan)
    # Held-out rows are never trained on: their scores leave clean, as split learning's embeddings do.
    scores = _part_scores(part, st["x_test"])
    _add_params(path, part=part, steps_done=np.asarray(job.rounds))
    sealed = _seal(key, scores, job, context, "heldout", job.rounds, nc.agency)
    _forget_transport_keys(path, context)
    return _reply(msg, {"bottom_sha256": hashlib.sha256(part.tobytes()).hexdigest()}, {"emb": sealed})


def _fit_part(job: JobSpec, x: np.ndarray, y: np.ndarray, plan: dp_sgd.Plan | None) -> np.ndarray:
    """A stacked part: logistic regression on this node's features, bias last."""
    w = model.lr_init(x.shape[1])
    if plan is not None:
        return dp_sgd.train(w, x, y, plan, lr=job.learning_rate, l2=job.l2)
    return model.lr_train(
        w, x, y, epochs=job.local_epochs, lr=job.learning_rate, batch=job.batch_size, l2=job.l2, seed=job.seed
    )


def _part_scores(part: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A part's logits, as the one column its node sends per row."""
    logits: np.ndarray = x.astype(np.float64) @ part[:-1] + part[-1]
    return logits[:, None]


def _log_loss(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(model.lr_predict(w, x), 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _check_held_out(order: list[str], received: dict[str, np.ndarray], own: str, rows: int, width: int) -> None:
    """The evaluation's embeddings: every agency once, this node among them, each other one's
    embeddings present with one row per held-out subject."""
    if len(set(order)) != len(order) or own not in order:
        raise ValueError("the evaluation's agency order must list each agency once, this node among them")
    for agency in order:
        if agency == own:
            continue
        shape = received[agency].shape if agency in received else None
        if shape != (rows, width):
            raise ValueError(f"held-out embeddings of '{agency}' are {shape}, not {rows} rows of {width}")
        if not np.isfinite(received[agency]).all():  # one NaN would make every recentred score NaN
            raise ValueError(f"held-out embeddings of '{agency}' hold a value that is not a finite number")


@app.evaluate("top")
def evaluate_top(msg: Message, context: Context) -> Message:
    """Label holder: score the held-out aligned rows; only the summary (AUC, counts) leaves. Once per
    run, after its last training step. A feature node chooses its held-out embeddings (sealed, so
    the coordinator alone cannot), so the counts can be made to give labels away: under `label_dp`
    they are counted against the noisy held-out labels (the same release as the training labels:
    post-processing, whatever the embeddings or the number of jobs) and reported as estimates.
    Without label DP, the labels are not protected: the gradients give the training labels away to
    the feature nodes and each run's evaluation can be made to read one held-out label (stated in
    docs/FEDERATED.md). With `top_calibration`, the top is refitted on the held-out rows setup
    marked (federated/top_calibration.py) and only the others are counted."""
    job, nc, path = _setup(context)
    st = _load(path)
    _check_run(st, job, context)
    if _steps_done(st) != job.rounds - 1:
        raise ValueError("evaluation before the last training step")
    order = [str(a) for a in cfg_of(msg)["order"]]
    RunReleases(_run_dir(path, context)).refuse_if_claimed("evaluate")  # its sealing keys are gone
    given = arrays_of(msg)
    received = {
        a: _open(_transport_key(path, context, a), given[a], job, context, "heldout", job.rounds, a)
        for a in order
        if a != nc.agency and a in given
    }
    width = job.part_width()
    _check_held_out(order, received, nc.agency, len(st["x_test"]), width)
    _once(path, context, "evaluate")  # claimed only for a well-formed request: a bad one costs nothing
    _forget_transport_keys(path, context)
    bottom, topm = Bottom(*unpack_state("b_", st)), Top(*unpack_state("t_", st))
    own = _part_scores(st["part"], st["x_test"]) if stacked(job) else bottom.forward(st["x_test"])
    embs = [own if a == nc.agency else received[a] for a in order]
    e, y = np.hstack(embs), st["y_test"]
    prevalence = float(st["y_train"].mean())
    marked = st["calibration"].astype(bool) if "calibration" in st else None
    calibration = marked if marked is not None and top_calibration.enough(y, marked) else None
    calibrated = calibration is not None
    if calibration is not None:
        # The top refitted on clean held-out rows; the evaluation counts only the others.
        w = top_calibration.calibrated_top(e[calibration], y[calibration], job.l2, width)
        e, y = e[~calibration], y[~calibration]
    elif stacked(job):
        # Too few held-out rows of an outcome to fit a top on: the parts' logits summed, recentred.
        w = np.r_[np.ones(len(order)), 0.0]
    else:
        # Held-out embeddings are clean: score them with weights undoing the training noise's
        # dilution, the bias recentred on where their scores fall (no label is used: post-processing).
        w = vertical_dp.deattenuated(topm.w, st["reliability"]) if "reliability" in st else topm.w
    uncalibrated_fallback = "reliability" in st or stacked(job)
    recentre = not calibrated and uncalibrated_fallback and len(e) > 0 and 0.0 < prevalence < 1.0
    if recentre:
        w = vertical_dp.recentred(w, e, prevalence)
    _add_params(path, scored_top=w)  # the top the evaluation scored with, and its digest, stay here
    scores = Top(w, topm.opt_state).scores(e)
    rep = model.report(scores, y, threshold=prevalence)
    if job.label_dp is not None:  # counted against the noisy held-out labels: estimates of the true figures
        counts = label_dp.debiased_counts(scores >= prevalence, y, job.label_dp)
        estimated_auc = label_dp.debiased_auc(cast(float, rep["auc"]), float(y.mean()), job.label_dp)
        rep = {"auc": estimated_auc, **model.counts_report(*counts)}
    cm = rep["confusion_matrix"]
    assert isinstance(cm, dict)
    return _reply(
        msg,
        {
            "auc": cast(float, rep["auc"]),
            "balanced_accuracy": cast(float, rep["balanced_accuracy"]),
            "tp": cm["tp"],
            "fp": cm["fp"],
            "tn": cm["tn"],
            "fn": cm["fn"],
            "threshold": prevalence,
            "top_sha256": hashlib.sha256(w.tobytes()).hexdigest(),
            "top_deattenuated": not calibrated and "reliability" in st,
            "top_recentred": recentre,
            "top_calibrated": calibrated,
            "calibration_rows": 0 if calibration is None else int(calibration.sum()),
            "estimated_from_noisy_labels": job.label_dp is not None,
        },
    )
