"""Pure parts of federated training: jobs, update validation, SecAgg+ arithmetic, DP, metrics."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    parameters_mod,
    parameters_multiply,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from federated import dp, model, node, updates, vertical
from federated.datasets import ElementInfo
from federated.jobs import VERTICAL_BATCH, parse_job
from xgate.errors import InvalidInput

BASE = {
    "job_id": "job-1",
    "purpose": "fraud-model",
    "mode": "horizontal",
    "features": ["civil.age"],
    "label": "tax.label",
    "label_holder": "tax",
    "rounds": 2,
}


def test_job_defaults_and_digest_stable() -> None:
    job = parse_job(BASE)
    assert job.learning_rate == 0.5 and job.batch_size == 256 and job.secagg
    assert job.digest() == parse_job(dict(BASE)).digest()
    assert parse_job({**BASE, "rounds": 3}).digest() != job.digest()
    v = parse_job({**BASE, "mode": "vertical"})
    assert v.learning_rate == 2.0 and v.batch_size == VERTICAL_BATCH == 16_384


@pytest.mark.parametrize(("mode", "clip"), [("horizontal", 2.0), ("vertical", 1.0)])
def test_record_dp_left_without_delta_or_clip_takes_the_benchmarks_and_digests_them(mode: str, clip: float) -> None:
    """An analyst's `dp = { epsilon = 4, unit = "record" }` was refused for a missing clip, a
    number only the benchmark's sweep could tell them."""
    short = parse_job({**BASE, "mode": mode, "dp": {"epsilon": 4, "unit": "record"}})
    assert short.dp is not None and (short.dp.delta, short.dp.clip) == (1e-6, clip)
    spelt = parse_job({**BASE, "mode": mode, "dp": {"epsilon": 4, "delta": 1e-6, "clip": clip, "unit": "record"}})
    assert short.digest() == spelt.digest()  # nodes decide on, and the ledger records, the values run
    own = parse_job({**BASE, "mode": mode, "dp": {"epsilon": 4, "delta": 1e-7, "clip": 0.5, "unit": "record"}})
    assert own.dp is not None and (own.dp.delta, own.dp.clip) == (1e-7, 0.5)


def test_the_api_document_says_delta_and_clip_may_be_left_out() -> None:
    """The REST body's schema (POST /v1/training/jobs) must not call required what the job accepts
    without: a client generated from the document would send what it did not need to."""
    from gateway.training_service import TrainingRequest

    dp = TrainingRequest.model_json_schema()["$defs"]["DPSpec"]
    assert dp["required"] == ["epsilon"]
    assert "leave it out" in dp["properties"]["clip"]["description"]
    assert "label_holder" not in TrainingRequest.model_json_schema()["required"]  # horizontal jobs need none


def test_node_level_dp_still_needs_its_clip() -> None:
    with pytest.raises(InvalidInput, match=r"invalid job: dp\.clip: Field required"):
        parse_job({**BASE, "dp": {"epsilon": 4, "delta": 1e-6}})


@pytest.mark.parametrize(
    "patch",
    [
        {"job_id": "X!"},
        {"features": ["tax.label"]},
        {"features": ["civil.age", "civil.age"]},
        {"mode": "vertical", "dp": {"epsilon": 1, "delta": 1e-5, "clip": 1}},
        {"secagg": True, "min_nodes": 1},
        {"rounds": 0},
        {"dp": {"epsilon": -1, "delta": 1e-5, "clip": 1}},
        {"update_bound": 9.0},
        {"unknown": 1},
    ],
)
def test_job_rejects_invalid(patch: dict) -> None:
    with pytest.raises(InvalidInput):
        parse_job({**BASE, **patch})


def test_prepare_update_clips_and_caps() -> None:
    delta = [np.array([0.5, -3.0, 2.0])]
    p = updates.prepare_update(delta, [(3,)], num_examples=5000, bound=1.0, max_weight=1000)
    assert p.clipped_values == 2 and p.weight == 1000 and p.weight_capped
    np.testing.assert_array_equal(p.arrays[0], [0.5, -1.0, 1.0])


@pytest.mark.parametrize(
    ("arrays", "shapes"),
    [
        ([np.array([np.nan, 0.0])], [(2,)]),
        ([np.array([np.inf, 0.0])], [(2,)]),
        ([np.zeros(3)], [(2,)]),
        ([np.zeros(2), np.zeros(1)], [(2,)]),
    ],
)
def test_bad_updates_rejected(arrays: list[np.ndarray], shapes: list[tuple[int, ...]]) -> None:
    with pytest.raises(InvalidInput):
        updates.prepare_update(arrays, shapes, 10, bound=1.0, max_weight=100)
    with pytest.raises(InvalidInput):
        updates.check_update(arrays, shapes, 10, bound=1.0, max_weight=100)


def test_server_rejects_out_of_range_and_overweight() -> None:
    with pytest.raises(InvalidInput, match="exceeds the bound"):
        updates.check_update([np.array([1.5])], [(1,)], 10, bound=1.0, max_weight=100)
    with pytest.raises(InvalidInput, match="weight"):
        updates.check_update([np.array([0.5])], [(1,)], 101, bound=1.0, max_weight=100)
    updates.check_update([np.array([1.0])], [(1,)], 100, bound=1.0, max_weight=100)


def _secagg_sum(prepared: list[updates.PreparedUpdate], c: float, max_weight: int) -> list[np.ndarray]:
    """Flower's SecAgg+ arithmetic (client: weight ratio, quantise; server: sum mod, dequantise),
    without the pairwise/private masks, which cancel exactly modulo the modulus."""
    q, mod = updates.SECAGG_QUANTIZATION_RANGE, updates.SECAGG_MODULUS_RANGE
    total: list[np.ndarray] | None = None
    for p in prepared:
        q_ratio = round(p.weight / max_weight * q)
        scaled = parameters_multiply(p.arrays, q_ratio / q)
        vec = [v.astype(np.int64) for v in factor_combine(q_ratio, quantize(scaled, c, q))]
        total = vec if total is None else [a + b for a, b in zip(total, vec, strict=True)]
    assert total is not None
    q_total, recon = factor_extract(parameters_mod(total, mod))
    agg = dequantize(recon, c, q)
    return [(v - (len(prepared) - 1) * c) * (q / q_total) for v in agg]


@settings(max_examples=40, deadline=None)
@given(
    n_nodes=st.integers(2, 5),
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([0.01, 1.0, 5.0]),
    bound=st.sampled_from([1.0, 4.0]),
)
def test_secagg_arithmetic_matches_plain_weighted_mean(n_nodes: int, seed: int, scale: float, bound: float) -> None:
    rng = np.random.default_rng(seed)
    max_weight = 5000
    prepared = [
        updates.prepare_update(
            [rng.normal(0, scale, 7), rng.normal(0, scale, (2, 3))],
            [(7,), (2, 3)],
            int(rng.integers(1, 8000)),
            bound=bound,
            max_weight=max_weight,
        )
        for _ in range(n_nodes)
    ]
    plain = updates.weighted_mean([(p.arrays, p.weight) for p in prepared])
    secure = _secagg_sum(prepared, bound, max_weight)
    q = updates.SECAGG_QUANTIZATION_RANGE
    total_ratio = sum(round(p.weight / max_weight * q) for p in prepared) / q
    tol = updates.quantisation_error_bound(bound, n_nodes, total_ratio)
    for a, b in zip(plain, secure, strict=True):
        assert np.max(np.abs(a - b)) <= tol
    # Without xgate's clipping SecAgg+ silently clips: an out-of-range value would come back wrong.
    raw = updates.PreparedUpdate([np.array([3 * bound])], max_weight, 0, False)
    assert abs(_secagg_sum([raw, raw], bound, max_weight)[0][0] - 3 * bound) > bound


def test_dp_accounting() -> None:
    assert dp.epsilon_spent(1.0, 0, 1e-5) == 0.0
    e1, e5 = dp.epsilon_spent(2.0, 1, 1e-5), dp.epsilon_spent(2.0, 5, 1e-5)
    assert 0 < e1 < e5
    assert dp.epsilon_spent(4.0, 5, 1e-5) < e5
    for eps in (1.0, 4.0, 8.0):
        z = dp.noise_for_epsilon(eps, 5, 1e-5)
        assert dp.epsilon_spent(z, 5, 1e-5) <= eps < dp.epsilon_spent(z * 0.99, 5, 1e-5)
    clipped, was = updates.l2_clip([np.array([3.0, 4.0])], 1.0)
    assert was and np.isclose(np.linalg.norm(clipped[0]), 1.0)


def test_metrics_and_histograms() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.1).astype(float)
    s = model.sigmoid(rng.normal(0, 1, 5000) + 2 * y - 2)
    from sklearn.metrics import roc_auc_score

    assert abs(model.auc(s, y) - roc_auc_score(y, s)) < 1e-12
    pos, neg = node.score_histograms(s, y)
    rep = node.histogram_report(pos, neg, threshold=0.1)
    assert abs(float(rep["auc"]) - roc_auc_score(y, s)) < 2e-3
    assert rep["n"] == 5000


def test_encode_uses_declared_ranges_only() -> None:
    infos = [
        ElementInfo("a.x", "int", 0, 100),
        ElementInfo("a.c", "category", 0, 2),
        ElementInfo("a.f", "flag", 0, 1),
        ElementInfo("a.m", "int", 0, 1_000_000),
    ]
    raw = np.array([[50, 2, 1, 0], [np.nan, 0, 0, 1_000_000]], dtype=float)
    x = model.encode(infos, raw)
    assert x.shape == (2, 1 + 3 + 1 + 1)  # x, one-hot(3), flag, log-scaled money: fixed by the catalogue
    np.testing.assert_allclose(x[0], [0.5, 0, 0, 1, 1, 0])
    np.testing.assert_allclose(x[1], [0, 1, 0, 0, 0, 1])


def test_vertical_split_model_matches_pooled_logistic_regression() -> None:
    """In-process split learning (no Flower) reaches the pooled model's AUC in few rounds."""
    rng = np.random.default_rng(1)
    n = 4000
    xa, xb = rng.normal(0, 1, (n, 3)), rng.normal(0, 1, (n, 2))
    y = (rng.random(n) < model.sigmoid(xa @ [1.0, -1.0, 0.5] + xb @ [0.8, 0.3] - 1)).astype(float)
    bots = {k: vertical.Bottom.init(x.shape[1], 2, 0, k) for k, x in (("a", xa), ("b", xb))}
    pre = {k: vertical.preconditioner(x, vertical.RIDGE) for k, x in (("a", xa), ("b", xb))}
    top = vertical.Top.init(4)
    for _ in range(8):
        e = np.hstack([bots["a"].forward(xa), bots["b"].forward(xb)])
        _, g = top.step(e, y, 1e-4, 2)
        bots["a"].backward(xa, g[:, :2], 2.0, pre["a"])
        bots["b"].backward(xb, g[:, 2:], 2.0, pre["b"])
    scores = top.scores(np.hstack([bots["a"].forward(xa), bots["b"].forward(xb)]))
    pooled = model.lr_train(model.lr_init(5), np.hstack([xa, xb]), y, epochs=20, lr=0.5, batch=256, l2=0, seed=0)
    assert model.auc(scores, y) > model.auc(model.lr_predict(pooled, np.hstack([xa, xb])), y) - 0.01
    assert vertical.align([["p1", "p2", "p3"], ["p3", "p1"], ["p1", "p3", "p9"]]) == ["p1", "p3"]


@given(st.integers(1, 1000), st.integers(1, 2000), st.integers(0, 2), st.integers(0, 10))
@settings(max_examples=60, deadline=None)
def test_every_epoch_is_cut_into_batches_of_equal_size_covering_each_row_once(
    n: int, batch: int, epoch: int, seed: int
) -> None:
    """No step runs on a small remainder: an epoch's batches differ by at most one row, none is
    larger than batch_size, and together they hold every row exactly once."""
    per_epoch = -(-n // batch)
    batches = [vertical.batch_indices(n, batch, epoch * per_epoch + k, seed) for k in range(per_epoch)]
    sizes = [len(b) for b in batches]
    assert max(sizes) <= batch and max(sizes) - min(sizes) <= 1
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(n))
