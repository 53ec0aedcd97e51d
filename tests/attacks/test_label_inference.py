"""Label inference from split-learning gradients, and the label-DP defence.

A feature node receives dL/dE for each aligned training row: (p - y) t_k / |t_k|^2, a multiple of
one vector whose sign is the sign of p - y, i.e. the label. The attack (direction attack, Li et al.
2022): project each row's gradient on the batch's leading direction and split by sign; credited
with the better of the two orientations. Without label DP it recovers every label; with the label
holder's randomized response (`label_dp = eps`, federated/label_dp.py, applied by the ClientApp's
`training_labels`) its success stays at the bound e^eps / (1 + e^eps) for balanced labels.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from federated import label_dp, model
from federated.jobs import parse_job
from federated.vertical import Bottom, Top, preconditioner
from federated.vertical_client import training_labels

N, H = 4000, 2


def _job(eps: float | None) -> Any:
    return parse_job(
        {
            "job_id": "attack",
            "purpose": "p-attack",
            "mode": "vertical",
            "features": ["civil.age", "tax.income"],
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 4,
            "label_dp": eps,
        }
    )


def _attack(grad: np.ndarray, y: np.ndarray) -> float:
    """Share of labels guessed right from one batch of gradients (best orientation)."""
    direction = np.linalg.svd(grad, full_matrices=False)[2][0]
    guess = (grad @ direction < 0).astype(float)
    acc = float((guess == y).mean())
    return max(acc, 1 - acc)


def _run(eps: float | None, seed: int = 0) -> list[float]:
    """Split learning (feature node + label holder) as the ClientApps run it; the attack per round."""
    rng = np.random.default_rng(seed)
    x_f, x_l = rng.random((N, 3)), rng.random((N, 2))
    y = (rng.random(N) < model.sigmoid(3 * (x_f[:, 0] - x_l[:, 0]) + 2 * (x_f[:, 1] - 0.5))).astype(float)
    y_train = training_labels(_job(eps), y)  # what the label holder's ClientApp trains on
    feat, own = Bottom.init(3, H, 0, "civil"), Bottom.init(2, H, 0, "tax")
    pf, pl = preconditioner(x_f, 1e-3), preconditioner(x_l, 1e-3)
    top = Top.init(2 * H)
    success = []
    for _ in range(4):
        _, grad = top.step(np.hstack([feat.forward(x_f), own.forward(x_l)]), y_train, 1e-4, H)
        success.append(_attack(grad[:, :H], y))  # what the feature node receives, against the true labels
        feat.backward(x_f, grad[:, :H], 2.0, pf)
        own.backward(x_l, grad[:, H:], 2.0, pl)
    return success


def test_without_label_dp_the_gradients_give_every_label_away() -> None:
    assert min(_run(None)) > 0.99


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_label_dp_holds_the_attack_to_its_bound(eps: float) -> None:
    bound = label_dp.attack_bound(eps)
    measured = _run(eps, seed=int(eps * 10))
    slack = 3 * np.sqrt(bound * (1 - bound) / N)  # sampling error of a success rate over N labels
    assert max(measured) <= bound + slack
    assert min(measured) >= bound - slack - 0.02  # the attack is still as good as the bound allows


def test_label_dp_noise_is_fresh_and_its_rate_is_the_stated_one() -> None:
    y = np.zeros(20_000)
    a, b = training_labels(_job(1.0), y), training_labels(_job(1.0), y)
    assert not np.array_equal(a, b)  # OS entropy, not the job's seed
    assert a.mean() == pytest.approx(label_dp.flip_probability(1.0), abs=0.012)
    assert np.array_equal(training_labels(_job(None), y), y)


def test_label_dp_is_vertical_only_and_digest_is_stable() -> None:
    with pytest.raises(Exception, match="label_dp"):
        parse_job({**json.loads(_job(1.0).model_dump_json()), "mode": "horizontal", "secagg": False, "min_nodes": 1})
    assert "label_dp" not in json.dumps(_job(None).model_dump(mode="json", exclude={"label_dp"}))
    assert _job(None).digest() != _job(1.0).digest()
