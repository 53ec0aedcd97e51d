"""Feature inference from vertical embeddings, and the record-level DP defence.

The coordinator relays (and the label holder consumes) every training embedding a feature node
sends: E_t = X1 W_t for each batch. The attacker knows some subjects' true feature values (side
knowledge: its own customers, a leaked file) and wants a sensitive binary feature of the others.
Attack: regress the known rows' feature on all their embeddings of the job (every step, side by
side), then predict the other rows. Embeddings are a linear map of the features, so without DP
the attack reads the feature off. With record-level DP (`dp.unit = "record"`, federated/
vertical_dp.py, the same calls the feature node's ClientApp makes), the job is (epsilon, delta)-DP
for each record under replacement, so no rule guesses a fair-coin feature better than
e^eps / (1 + e^eps) + delta; the measured success must stay within that bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from federated import label_dp, model, vertical_dp
from federated.vertical import Bottom, Top, preconditioner

N, H, ROUNDS, KNOWN = 4000, 4, 4, 1000


def _population(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    secret = (rng.random(N) < 0.5).astype(float)  # the feature the attacker wants: a fair coin
    x_f = np.column_stack([secret, rng.random((N, 2))])
    x_l = rng.random((N, 2))
    y = (rng.random(N) < model.sigmoid(2 * secret + 3 * (x_f[:, 1] - x_l[:, 0]) - 1)).astype(float)
    return x_f, x_l, y


def _run(eps: float | None, seed: int) -> tuple[float, np.ndarray]:
    """Split learning as the ClientApps run it; returns the attack's success on the unknown rows."""
    x_f, x_l, y = _population(seed)
    plan = None
    if eps is not None:
        plan = vertical_dp.plan(eps, 1e-6, 1.0, n=N, batch=N, rounds=ROUNDS, raw_features=3)
    feat, own, top = Bottom.init(3, H, 0, "civil"), Bottom.init(2, H, 0, "tax"), Top.init(2 * H)
    pf = preconditioner(x_f, 1e-3) if plan is None else vertical_dp.private_preconditioner(x_f, plan)
    pl = preconditioner(x_l, 1e-3)
    seen = []  # what leaves the feature node, step by step
    for _ in range(ROUNDS):
        e = feat.forward(x_f)
        sent = e if plan is None else vertical_dp.private_embeddings(e, plan)
        seen.append(sent)
        _, grad = top.step(np.hstack([sent, own.forward(x_l)]), y, 1e-4, H)
        if plan is None:
            feat.backward(x_f, grad[:, :H], 2.0, pf)
        else:
            feat.apply(vertical_dp.private_update(x_f, grad[:, :H], plan), 2.0, pf)
        own.backward(x_l, grad[:, H:], 2.0, pl)
    return _attack(np.hstack(seen), x_f[:, 0]), np.hstack(seen)


def _attack(emb: np.ndarray, secret: np.ndarray) -> float:
    """Least squares from the known rows' embeddings to their feature; accuracy on the others."""
    z = np.hstack([emb, np.ones((len(emb), 1))])
    coef = np.linalg.lstsq(z[:KNOWN], secret[:KNOWN], rcond=None)[0]
    guess = (z[KNOWN:] @ coef > 0.5).astype(float)
    return float((guess == secret[KNOWN:]).mean())


def test_without_dp_the_embeddings_give_the_feature_away() -> None:
    success, _ = _run(None, seed=0)
    assert success > 0.99


@pytest.mark.parametrize("eps", [1.0, 4.0])
def test_record_dp_holds_feature_inference_to_its_bound(eps: float) -> None:
    bound = label_dp.attack_bound(eps) + 1e-6  # e^eps / (1 + e^eps) + delta
    success, emb = _run(eps, seed=int(eps))
    unknown = N - KNOWN
    slack = 3 * np.sqrt(bound * (1 - bound) / unknown)  # sampling error of a rate over the unknown rows
    assert success <= bound + slack
    assert np.isfinite(emb).all()
