"""The label holder's top fitted on clean held-out rows (federated/top_calibration.py) and the job
option that asks for it (`top_calibration`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federated import model, top_calibration, vertical_dp
from federated.jobs import parse_job
from federated.vertical import Top
from xgate.errors import InvalidInput

PSEUDONYMS = [f"p{i:05d}" for i in range(10_000)]
DP = {"epsilon": 4.0, "delta": 1e-6, "clip": 1.0, "unit": "record"}
JOB: dict[str, Any] = {
    "job_id": "cal-1",
    "purpose": "fraud-model",
    "mode": "vertical",
    "features": ["civil.age", "tax.income"],
    "label": "tax.label",
    "label_holder": "tax",
    "rounds": 1,
    "dp": DP,
}


def test_the_split_is_keyed_by_pseudonym_and_seed_at_the_share_asked() -> None:
    part = top_calibration.calibration_rows(PSEUDONYMS, 0.3, seed=0)
    assert 0.28 < part.mean() < 0.32
    again = top_calibration.calibration_rows(PSEUDONYMS, 0.3, seed=0)
    assert (part == again).all()  # reproducible from the job
    other_seed = top_calibration.calibration_rows(PSEUDONYMS, 0.3, seed=1)
    assert 0.3 < (part != other_seed).mean() < 0.5  # another seed, another split
    wider = top_calibration.calibration_rows(PSEUDONYMS, 0.6, seed=0)
    assert not (part & ~wider).any()  # nested: a larger share only adds rows


@settings(max_examples=50, deadline=None)
@given(
    names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40, unique=True),
    share=st.floats(min_value=0.05, max_value=0.9),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_a_rows_side_depends_on_its_pseudonym_alone_never_on_the_order(
    names: list[str], share: float, seed: int
) -> None:
    """The label holder's row order is secret and differs between runs: the split must not follow it."""
    split = top_calibration.calibration_rows(names, share, seed)
    backwards = top_calibration.calibration_rows(names[::-1], share, seed)[::-1]
    alone = np.array([top_calibration.calibration_rows([n], share, seed)[0] for n in names])
    assert (split == backwards).all() and (split == alone).all()


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
def test_a_share_outside_the_open_interval_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="within"):
        top_calibration.calibration_rows(PSEUDONYMS[:10], share, 0)


def test_enough_needs_both_outcomes_in_both_parts() -> None:
    y = np.r_[np.ones(50), np.zeros(50)]
    part = np.tile([True, False], 50)
    assert top_calibration.enough(y, part)
    assert not top_calibration.enough(y, np.r_[np.ones(50, bool), np.zeros(50, bool)])  # positives only on one side
    few = np.r_[np.ones(30), np.zeros(170)]
    assert not top_calibration.enough(few, np.tile([True, False], 100))  # 15 positives a side < MIN_PER_CLASS


def _held_out(rng: np.random.Generator, n: int = 6000) -> tuple[np.ndarray, np.ndarray]:
    """Clean embeddings of two blocks (h = 2) and labels from a known logistic top."""
    e = rng.normal(size=(n, 4))
    logit = e @ np.array([1.5, -1.0, 2.0, 0.5]) - 0.5
    return e, (rng.random(n) < model.sigmoid(logit)).astype(float)


def test_the_calibrated_top_undoes_the_dilution_of_a_top_fitted_on_noisy_embeddings() -> None:
    """What top_calibration is for: a top fitted on training embeddings with noise of sd 3 (ε ≈ 8
    in the census jobs) shrinks the noisy block's weights; refitted on clean held-out rows it ranks
    them as the true top does."""
    rng = np.random.default_rng(3)
    train, y_train = _held_out(rng)
    noisy = train.copy()
    noisy[:, 2:] += rng.normal(0, 3.0, size=(len(noisy), 2))
    diluted = Top.init(4)
    diluted.step(noisy, y_train, 1e-4, 2, newton_steps=25)
    e, y = _held_out(rng)
    part = top_calibration.calibration_rows([f"s{i}" for i in range(len(y))], 0.5, seed=0)
    w = top_calibration.calibrated_top(e[part], y[part], 1e-4, 2)
    truth = model.auc(e[~part] @ np.array([1.5, -1.0, 2.0, 0.5]), y[~part])
    calibrated = model.auc(e[~part] @ w[:-1], y[~part])
    as_fitted = model.auc(e[~part] @ diluted.w[:-1], y[~part])
    assert calibrated == pytest.approx(truth, abs=0.005)
    assert calibrated > as_fitted + 0.01  # the diluted top weighs the noisy block too little
    assert w[:-1] == pytest.approx([1.5, -1.0, 2.0, 0.5], abs=0.3)
    # The de-attenuated top (what a job without top_calibration scores with) sits in between.
    noise_sd = np.r_[0.0, 0.0, 3.0, 3.0]
    deatt = vertical_dp.deattenuated(diluted.w, vertical_dp.reliability(noisy, noise_sd))
    assert as_fitted <= model.auc(e[~part] @ deatt[:-1], y[~part]) <= calibrated + 0.005


def test_calibration_embeddings_that_are_not_finite_or_do_not_match_are_refused() -> None:
    e = np.ones((10, 4))
    with pytest.raises(ValueError, match="labels"):
        top_calibration.calibrated_top(e, np.ones(9), 1e-4, 2)
    e[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        top_calibration.calibrated_top(e, np.ones(10), 1e-4, 2)


def test_the_job_option_is_for_vertical_record_dp_jobs_only() -> None:
    assert parse_job({**JOB, "top_calibration": 0.5}).top_calibration == 0.5
    for bad, why in (
        ({"dp": None}, "top_calibration"),
        ({"mode": "horizontal", "secagg": False}, "top_calibration"),
        ({"top_calibration": 0.95}, "top_calibration"),
        ({"top_calibration": 0.0}, "top_calibration"),
        ({"top_calibration": "half"}, "top_calibration"),
    ):
        with pytest.raises(InvalidInput, match=why):
            parse_job({**JOB, "top_calibration": 0.5, **bad})


def test_top_calibration_is_part_of_the_digest_the_nodes_approve() -> None:
    """(A job without it digests as before it existed: tests/unit/test_fed_encodings.py.)"""
    plain = parse_job(JOB)
    calibrated = parse_job({**JOB, "top_calibration": 0.5})
    assert plain.digest() != calibrated.digest()  # nodes approve the job as it will be scored
    assert parse_job({**JOB, "top_calibration": 0.5}).digest() == calibrated.digest()
