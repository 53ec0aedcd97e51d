"""Attack (measured): in a vertical record-DP job a feature node standardising a column with its own
rows' mean and sd releases embeddings whose sensitivity to one person's value is far above the
2 x clip the noise is calibrated for: replacing the victim's income 0 by 2,000,000 rescales every
other row. So jobs.py refuses `standardise` in vertical record-DP jobs; with the declared-range
encodings (minmax, log) the other rows do not move and the sensitivity stays within 2 x clip."""

from __future__ import annotations

import numpy as np
import pytest

from federated import datasets, model, vertical_dp
from federated.datasets import ElementInfo
from federated.jobs import Encoding, Method, parse_job
from xgate.errors import InvalidInput

INCOME = ElementInfo("tax.income", "int", 0, 2_000_000)
CLIP = 1.0


def _embedding_change(method: Method) -> float:
    _, cols, _ = datasets.synthetic_population(1000, seed=3)
    income = cols["tax.income"].values.astype(float)
    enc = [Encoding(method=method)]
    low, high = income.copy(), income.copy()
    low[-1], high[-1] = 0.0, 2_000_000.0  # one person's record replaced

    def embed(col: np.ndarray) -> np.ndarray:
        raw = col[:, None]
        x = model.encode([INCOME], raw, enc, model.fit_stats([INCOME], enc, raw))
        return vertical_dp.clip_rows(x @ np.full((1, 4), 0.5), CLIP)

    return float(np.linalg.norm(embed(low) - embed(high)))


def test_positive_control_own_statistics_multiply_an_embedding_batchs_sensitivity() -> None:
    assert _embedding_change(Method.STANDARDISE) > 5 * 2 * CLIP  # 16.05 measured by the review


@pytest.mark.parametrize("method", [Method.MINMAX, Method.LOG])
def test_declared_range_encodings_stay_within_the_calibrated_sensitivity(method: Method) -> None:
    assert _embedding_change(method) <= 2 * CLIP + 1e-12


def test_a_vertical_record_dp_job_standardising_is_refused_before_any_node_sees_it() -> None:
    job = {
        "job_id": "v-std", "purpose": "fraud-model", "mode": "vertical", "features": ["tax.income", "civil.age"],
        "label": "civil.label", "label_holder": "civil", "rounds": 1, "encodings": {"tax.income": "standardise"},
        "dp": {"epsilon": 1.0, "delta": 1e-6, "clip": CLIP, "unit": "record"},
    }  # fmt: skip
    with pytest.raises(InvalidInput, match=r"tax\.income with minmax or log over its declared range"):
        parse_job(job)
