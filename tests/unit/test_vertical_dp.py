"""Record-level DP for vertical feature nodes (federated/vertical_dp.py): clipping bounds for all
inputs (hypothesis), noise calibrated to the maintained accountant's epsilon, unpredictable noise,
the job-file rules (record unit only, ledger refuses an overspend), and the label holder's
de-attenuation of its top weights (post-processing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from federated import datasets, model, vertical_dp
from federated.admission import LedgerAdmission, dp_release, record_dp_plan
from federated.jobs import parse_job
from federated.vertical import Bottom, Top, batch_indices
from federated.vertical_client import dp_plan, private_releases
from xgate.errors import InvalidInput, PolicyDenied

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
clips = st.floats(min_value=1e-3, max_value=100.0)


def _job(**kw: Any) -> Any:
    return parse_job(
        {
            "job_id": "vdp",
            "purpose": "fraud-model",
            "mode": "vertical",
            "features": ["civil.age", "tax.income"],
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 6,
            "dp": {"epsilon": 2.0, "delta": 1e-6, "clip": 1.0, "unit": "record"},
            **kw,
        }
    )


@settings(max_examples=200, deadline=None)
@given(a=arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 6)), elements=finite), bound=clips)
def test_clip_rows_bounds_every_row(a: np.ndarray, bound: float) -> None:
    out = vertical_dp.clip_rows(a, bound)
    assert np.all(np.linalg.norm(out, axis=1) <= bound * (1 + 1e-9))
    small = np.linalg.norm(a, axis=1) <= bound
    assert np.allclose(out[small], a[small])  # rows within the bound are untouched


@settings(max_examples=200, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(1, 4)),
    data=st.data(),
    bound=clips,
)
def test_each_example_moves_the_update_sum_by_at_most_the_clip(
    shape: tuple[int, int, int], data: st.DataObject, bound: float
) -> None:
    """Replacing one example's row and gradient changes the clipped sum by at most 2 x clip."""
    n, d, h = shape
    x = data.draw(arrays(np.float64, (n, d), elements=finite))
    g = data.draw(arrays(np.float64, (n, h), elements=finite))
    x2, g2 = x.copy(), g.copy()
    x2[0] = data.draw(arrays(np.float64, (d,), elements=finite))
    g2[0] = data.draw(arrays(np.float64, (h,), elements=finite))
    one = vertical_dp.clipped_update_sum(x[:1], g[:1], bound)
    assert np.linalg.norm(one) <= bound * (1 + 1e-9)
    diff = vertical_dp.clipped_update_sum(x, g, bound) - vertical_dp.clipped_update_sum(x2, g2, bound)
    scale = max(1.0, float(np.abs(vertical_dp.clipped_update_sum(x, g, bound)).max()))
    assert np.linalg.norm(diff) <= 2 * bound * (1 + 1e-9) + 1e-9 * scale  # float cancellation in the sum


def test_unclipped_update_equals_the_plain_gradient() -> None:
    rng = np.random.default_rng(0)
    x, g = rng.random((50, 3)), rng.normal(0, 0.01, (50, 2))
    b = Bottom.init(3, 2, 0, "civil")
    plain = np.vstack([x.T @ g, g.sum(axis=0, keepdims=True)])
    assert np.allclose(vertical_dp.clipped_update_sum(x, g, 1e6), plain)
    w = b.w.copy()
    b.backward(x, g, 0.5, np.eye(4))
    assert np.allclose(b.w, w - 0.5 * plain / 50)


@pytest.mark.parametrize(
    ("eps", "rounds", "n", "batch"), [(1.0, 10, 1000, 10_000_000), (4.0, 30, 1000, 100), (8.0, 5, 50, 7)]
)
def test_noise_matches_the_accountant_for_the_configured_steps(eps: float, rounds: int, n: int, batch: int) -> None:
    p = vertical_dp.plan(eps, 1e-6, 1.0, n=n, batch=batch, rounds=rounds, raw_features=3)
    # Count, from the job's own batch schedule, how often the most used row is released.
    counts = np.zeros(n, dtype=int)
    for t in range(rounds):
        counts[batch_indices(n, batch, t, seed=3)] += 1
    assert p.occurrences == counts.max() and p.releases == 2 * counts.max() + 1
    acc = RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(p.noise_multiplier), p.releases)
    assert acc.get_epsilon(1e-6) == pytest.approx(p.epsilon, rel=1e-6)
    assert eps * 0.99 < p.epsilon <= eps
    smaller = RdpAccountant()
    smaller.compose(dp_accounting.GaussianDpEvent(p.noise_multiplier * 0.98), p.releases)
    assert smaller.get_epsilon(1e-6) > eps  # less noise would overspend


def test_released_noise_has_the_calibrated_scale_and_is_unpredictable() -> None:
    p = vertical_dp.plan(1.0, 1e-6, 0.5, n=1000, batch=1000, rounds=4, raw_features=2)
    e = np.zeros((20_000, 4))
    a, b = vertical_dp.private_embeddings(e, p), vertical_dp.private_embeddings(e, p)
    assert not np.allclose(a, b)  # OS entropy, not the job's seed
    assert a.std() == pytest.approx(p.noise_multiplier * 2 * p.clip, rel=0.02)
    x, g = np.zeros((10, 2)), np.zeros((10, 4))
    draws = np.array([vertical_dp.private_update(x, g, p) for _ in range(500)])
    assert draws.std() == pytest.approx(p.noise_multiplier * 2 * p.clip / 10, rel=0.05)


def test_private_preconditioner_is_symmetric_positive_and_near_the_exact_one_for_large_n() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((200_000, 3))
    p = vertical_dp.plan(8.0, 1e-7, 1.0, n=len(x), batch=len(x), rounds=2, raw_features=3)
    pre = vertical_dp.private_preconditioner(x, p)
    assert np.allclose(pre, pre.T) and np.all(np.linalg.eigvalsh(pre) > 0)
    x1 = np.hstack([x, np.ones((len(x), 1))])
    exact = np.linalg.inv(x1.T @ x1 / len(x) + 1e-3 * np.eye(4))
    assert np.linalg.norm(pre - exact) / np.linalg.norm(exact) < 0.1
    big = dataclasses.replace(p, noise_multiplier=1e6)  # noise far above the data: bounded by the ridge
    assert np.linalg.eigvalsh(vertical_dp.private_preconditioner(x, big)).max() < 1e3


def test_plan_refuses_what_it_cannot_protect() -> None:
    with pytest.raises(ValueError, match="no aligned training rows"):
        vertical_dp.plan(1.0, 1e-6, 1.0, n=0, batch=10, rounds=1, raw_features=1)
    with pytest.raises(ValueError, match="without features"):
        vertical_dp.plan(1.0, 1e-6, 1.0, n=10, batch=10, rounds=1, raw_features=0)


def test_vertical_jobs_take_record_dp_only() -> None:
    job = _job()
    assert private_releases(job, label_holder=False) and not private_releases(job, label_holder=True)
    assert not private_releases(_job(dp=None), label_holder=False)
    with pytest.raises(InvalidInput, match=r"record-level DP only"):
        _job(dp={"epsilon": 2.0, "delta": 1e-6, "clip": 1.0})  # node-level (the default unit)
    assert dp_plan(job, 500, 2).epsilon <= 2.0


def test_feature_node_ledger_records_the_plan_and_refuses_an_overspend(tmp_path: Path) -> None:
    subj, cols, _ = datasets.synthetic_population(50, seed=2)
    store, ledger = tmp_path / "s.sqlite", tmp_path / "l.sqlite"
    datasets.write_store(store, "synth", subj, {e: cols[e] for e in ["civil.age", "tax.income", "tax.label"]})
    job = _job()
    adm = LedgerAdmission(ledger, store)
    adm.configure(["fraud-model"], {"synth": 3.0})
    assert adm(job, "civil").approved and adm.spent("synth") == 2.0
    p = dp_plan(job, 40, 1)
    record_dp_plan(
        ledger,
        job,
        run_id="1",
        epsilon=p.epsilon,
        noise_multiplier=p.noise_multiplier,
        sample_rate=1.0,
        steps=p.releases,
    )
    rel = dp_release(ledger, job.job_id)
    assert rel is not None and rel["epsilon"] == p.epsilon and rel["steps"] == p.releases
    with pytest.raises(PolicyDenied, match="exceeds"):
        record_dp_plan(ledger, job, run_id="1", epsilon=2.5, noise_multiplier=1.0, sample_rate=1.0, steps=3)
    second = _job(job_id="vdp-2")
    assert not adm(second, "civil").approved  # 2 + 2 > the cap of 3


def test_reliability_is_the_share_of_variance_that_is_not_noise() -> None:
    rng = np.random.default_rng(3)
    clean = rng.normal(0.0, [0.5, 1.0, 2.0], size=(200_000, 3))
    noisy = clean + rng.normal(0.0, [0.0, 1.0, 4.0], size=clean.shape)
    rel = vertical_dp.reliability(noisy, np.array([0.0, 1.0, 4.0]))
    assert rel[0] == 1.0  # a column without noise (the label holder's own) is left alone
    assert rel[1:] == pytest.approx([1 / 2, 4 / 20], rel=0.05)
    # Noise larger than the whole observed variance: floored, never negative or infinite.
    assert vertical_dp.reliability(noisy[:, 1:2], np.array([10.0]))[0] == vertical_dp.RELIABILITY_FLOOR


def test_deattenuated_top_scores_clean_rows_better_than_the_diluted_fit() -> None:
    """A top fitted on one clean and one noisy column underweights the noisy one; held-out rows
    arrive clean, so dividing by the reliability restores the balance and the held-out AUC."""
    rng = np.random.default_rng(5)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, 2))
        y = (rng.random(n) < model.sigmoid(1.5 * x[:, 0] + 1.5 * x[:, 1])).astype(float)
        return x, y

    (x, y), (x_test, y_test) = rows(50_000), rows(50_000)
    sd = np.array([0.0, 2.0])
    noisy = x + rng.normal(0.0, sd, size=x.shape)
    top = Top.init(2)
    top.step(noisy, y, 1e-4, 1)
    fixed = vertical_dp.deattenuated(top.w, vertical_dp.reliability(noisy, sd))

    def auc(w: np.ndarray) -> float:
        return float(model.report(Top(w, {}).scores(x_test), y_test, threshold=0.5)["auc"])

    assert top.w[1] < 0.5 * top.w[0]  # diluted: the noisy column's weight is well below the clean one's
    assert fixed[1] == pytest.approx(fixed[0], rel=0.25)  # restored towards the true 1:1
    assert auc(fixed) > auc(top.w) + 0.01


def test_deattenuated_refuses_a_reliability_per_weight_mismatch() -> None:
    with pytest.raises(ValueError, match="2 reliabilities for 3 top weights"):
        vertical_dp.deattenuated(np.zeros(4), np.ones(2))


def test_a_plan_kept_with_the_training_data_comes_back_unchanged() -> None:
    """Setup calibrates once and keeps the plan; every step reads it back instead of re-calibrating."""
    plan = vertical_dp.plan(1.0, 1e-6, 1.0, n=7_000, batch=256, rounds=3, raw_features=4)
    back = vertical_dp.Plan.from_array(plan.as_array())
    assert back == plan and isinstance(back.occurrences, int) and isinstance(back.releases, int)


@given(
    st.integers(0, 2**32 - 1),
    st.floats(0.01, 0.5),
    st.floats(-30.0, 30.0),
    st.floats(0.1, 50.0),
)
@settings(max_examples=60, deadline=None)
def test_recentring_puts_the_mean_score_at_the_prevalence_and_moves_only_the_bias(
    seed: int, prevalence: float, bias: float, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, 1.0, (400, 6))
    w = np.r_[rng.normal(0.0, scale, 6), bias]
    centred = vertical_dp.recentred(w, e, prevalence)
    scores = model.sigmoid(e @ centred[:-1] + centred[-1])
    assert float(scores.mean()) == pytest.approx(prevalence, abs=1e-6)
    assert np.array_equal(centred[:-1], w[:-1])  # only the bias moves: every row's logit shifts alike


def test_recentring_puts_scores_on_both_sides_of_the_threshold_again() -> None:
    """De-attenuated weights with the intercept of noise-era embeddings: every held-out score above
    the prevalence threshold (a classifier saying yes to everyone) until the bias is recentred."""
    rng = np.random.default_rng(5)
    e = rng.normal(0.0, 1.0, (2000, 4))
    y = (rng.random(2000) < model.sigmoid(e @ [2.0, -1.0, 0.5, 1.0] - 3.0)).astype(float)
    prevalence = float(y.mean())
    shifted = np.r_[2.0, -1.0, 0.5, 1.0, 40.0]  # ranks as well as the truth; bias far off
    assert (model.sigmoid(e @ shifted[:-1] + shifted[-1]) >= prevalence).all()
    before = model.report(model.sigmoid(e @ shifted[:-1] + shifted[-1]), y, threshold=prevalence)
    centred = vertical_dp.recentred(shifted, e, prevalence)
    after = model.report(model.sigmoid(e @ centred[:-1] + centred[-1]), y, threshold=prevalence)
    assert before["balanced_accuracy"] == pytest.approx(0.5)
    assert float(after["balanced_accuracy"]) > 0.75
    assert after["auc"] == pytest.approx(model.auc(e @ shifted[:-1], y), abs=1e-9)


@pytest.mark.parametrize("prevalence", [0.0, 1.0, -0.1])
def test_recentring_refuses_a_prevalence_with_nothing_to_centre_on(prevalence: float) -> None:
    with pytest.raises(ValueError, match="prevalence"):
        vertical_dp.recentred(np.zeros(3), np.zeros((4, 2)), prevalence)


@given(st.integers(1, 2000), st.integers(1, 3000), st.integers(1, 40), st.integers(0, 5))
@settings(max_examples=80, deadline=None)
def test_no_row_is_in_more_batches_than_the_accountant_counts(n: int, batch: int, rounds: int, seed: int) -> None:
    """The DP plan's release count rests on `occurrences`: for any schedule, the most used row is in
    exactly that many of the job's batches, and no batch exceeds batch_size or repeats a row."""
    counts = np.zeros(n, dtype=int)
    for t in range(rounds):
        rows = batch_indices(n, batch, t, seed)
        assert len(rows) <= batch and len(np.unique(rows)) == len(rows)
        counts[rows] += 1
    assert counts.max() == vertical_dp.occurrences(n, batch, rounds)
