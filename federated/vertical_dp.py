"""Record-level differential privacy for a vertical feature node (pure): what it sends is DP.

A feature node k sends the label holder (through the coordinator) the embeddings E = X1 W of each
training batch, and the digest of its bottom weights; its weights move with the gradients it
receives. With `dp.unit = "record"` every release that touches its training rows is a Gaussian
mechanism with per-record sensitivity bounded by clipping:

* the preconditioner P = (G/n + ridge I)^-1 (`private_preconditioner`): the Gram matrix G of the
  encoded rows [x, 1], each row clipped to L2 norm sqrt(k + 1) for k raw features (every encoding
  a record-DP vertical job may use is within [0, 1] per raw feature, so clipping is a no-op; a job
  standardising a feature is refused, federated/jobs.py: the node's own mean and sd, which one record
  moves, would rescale every row and multiply each release's sensitivity), released once with
  symmetric Gaussian noise;
* every training embedding row (`private_embeddings`): clipped to L2 norm `clip`, plus Gaussian
  noise per coordinate;
* every bottom update (`private_update`): the per-example terms x1_i g_i' (Frobenius norm
  |x1_i| |g_i|) clipped to `clip`, summed, plus Gaussian noise, divided by the batch size.

Everything else the node sends (later embeddings, the weights' digest, held-out embeddings) is
post-processing of these and of what it receives. The neighbouring relation is the replacement of
one person's record (its feature values), not its presence: alignment reveals which aligned
subjects a node holds to the label holder anyway (docs/FEDERATED.md, "Who learns what"). So a
release's sensitivity is twice its clip bound, and the noise is noise_multiplier x 2 x bound.

The label holder may post-process what it receives at no privacy cost. Its top model, fitted on
noisy embeddings, underweights them (regression dilution: the noise is of sd 3-20 x the clip at
epsilon 8-1), while held-out rows arrive clipped but not noised; so the weights it scores with are
divided, per embedding column, by the column's reliability, the share of its variance that is not
noise (`reliability`, `deattenuated`), estimated from the last training batch and the noise sd every
node can compute from the job (`embedding_noise_sd`).

Batches are the job's public, deterministic schedule (`vertical.batch_indices`, shared by every
node), so there is no amplification by sampling: a row in `occurrences` batches takes part in
2 x occurrences + 1 Gaussian releases, composed by Google's `dp-accounting` RDP accountant
(`dp_sgd.accountant_epsilon` with sampling rate 1), and `plan` calibrates the noise multiplier to the
job's epsilon at its delta. Noise draws from OS entropy (`secrets`), never from the job's seed.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass

import numpy as np

from federated import dp_sgd, model
from federated.vertical import RIDGE


@dataclass(frozen=True)
class Plan:
    """One feature node's noise for a whole vertical job, and what its accountant says it spends."""

    noise_multiplier: float
    occurrences: int  # largest number of training batches one row is in
    releases: int  # Gaussian releases one row takes part in: 2 x occurrences + 1
    epsilon: float  # the accountant's epsilon for all releases (<= the job's epsilon)
    delta: float
    clip: float  # bound of one embedding row and of one example's update term
    feature_clip: float  # bound of one encoded row [x, 1] in the preconditioner's Gram matrix

    def as_array(self) -> np.ndarray:
        """The plan as a node keeps it with its training data (computed once, at setup)."""
        return np.asarray(dataclasses.astuple(self), dtype=np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> Plan:
        z, occ, releases, eps, delta, clip, feature_clip = (float(v) for v in a)
        return cls(z, int(occ), int(releases), eps, delta, clip, feature_clip)

    def ledger_entry(self) -> dp_sgd.LedgerEntry:
        """What `admission.record_dp_plan` records of this plan: every release at rate 1."""
        return dp_sgd.LedgerEntry(
            epsilon=self.epsilon, noise_multiplier=self.noise_multiplier, sample_rate=1.0, steps=self.releases
        )

    def as_metrics(self) -> dict[str, float | int]:
        return {
            "dp_epsilon": self.epsilon,
            "dp_sigma": self.noise_multiplier,
            "dp_sample_rate": 1.0,
            "dp_steps": self.releases,
        }


def occurrences(n: int, batch: int, rounds: int) -> int:
    """Most batches any one row is in: the schedule cuts seeded permutations, one batch per step."""
    per_epoch = max(1, -(-n // batch))
    return -(-rounds // per_epoch)


def plan(epsilon: float, delta: float, clip: float, *, n: int, batch: int, rounds: int, raw_features: int) -> Plan:
    if n <= 0:
        raise ValueError("no aligned training rows")
    if raw_features <= 0:
        raise ValueError("a feature node without features releases nothing to protect")
    if (why := dp_sgd.delta_problem(delta, n)) is not None:  # n: aligned rows, which alignment reveals anyway
        raise ValueError(why)
    occ = occurrences(n, batch, rounds)
    releases = 2 * occ + 1
    z = dp_sgd.calibrate(epsilon, delta, 1.0, releases)
    spent = dp_sgd.accountant_epsilon(z, 1.0, releases, delta)
    return Plan(z, occ, releases, spent, delta, clip, math.sqrt(raw_features + 1))


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng or np.random.default_rng(secrets.randbits(128))


def clip_rows(a: np.ndarray, bound: float) -> np.ndarray:
    """Each row scaled down to L2 norm <= bound (rows already within it are unchanged)."""
    norms = np.linalg.norm(a, axis=1)
    return np.asarray(a * np.minimum(1.0, bound / np.maximum(norms, 1e-300))[:, None])


def embedding_noise_sd(p: Plan) -> float:
    """The sd of the noise on each coordinate of a released training embedding: z x 2 clip."""
    return p.noise_multiplier * 2 * p.clip


def private_embeddings(e: np.ndarray, p: Plan, rng: np.random.Generator | None = None) -> np.ndarray:
    """Training embeddings as released: rows clipped to `clip`, Gaussian noise sd z x 2 clip."""
    sd = embedding_noise_sd(p)
    return clip_rows(np.asarray(e, dtype=np.float64), p.clip) + _rng(rng).normal(0.0, sd, size=np.shape(e))


# Below this the estimate is mostly its own sampling error (var - sd^2 is a small difference of
# large numbers at epsilon 1); it caps the correction at x50.
RELIABILITY_FLOOR = 0.02


def reliability(noisy: np.ndarray, noise_sd: np.ndarray) -> np.ndarray:
    """Per column of a batch of noisy embeddings: (var - noise_sd^2) / var, in [RELIABILITY_FLOOR, 1].
    Columns without noise (noise_sd 0) get exactly 1."""
    var = np.asarray(noisy, dtype=np.float64).var(axis=0)
    noise_var = np.square(np.broadcast_to(np.asarray(noise_sd, dtype=np.float64), var.shape))
    ratio = (var - noise_var) / np.maximum(var, 1e-300)
    return np.where(noise_var > 0, np.clip(ratio, RELIABILITY_FLOOR, 1.0), 1.0)


def deattenuated(top_w: np.ndarray, column_reliability: np.ndarray) -> np.ndarray:
    """Top weights (bias last) to score clean embeddings with: each column's weight / its reliability."""
    w = np.array(top_w, dtype=np.float64)
    if len(column_reliability) != len(w) - 1:
        raise ValueError(f"{len(column_reliability)} reliabilities for {len(w) - 1} top weights")
    w[:-1] = w[:-1] / np.asarray(column_reliability, dtype=np.float64)
    return w


def recentred(top_w: np.ndarray, e: np.ndarray, prevalence: float) -> np.ndarray:
    """Top weights (bias last) with the bias moved so that the mean score over the rows `e` is
    `prevalence`. De-attenuated weights rank well but lose their intercept (fitted while the
    embeddings were noise), so every score can land on one side of the prevalence threshold. Uses
    no label, only where the scores fall; the ranking, hence the AUC, is unchanged."""
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"a prevalence of {prevalence} leaves nothing to centre on")
    w = np.array(top_w, dtype=np.float64)
    logits = np.asarray(e, dtype=np.float64) @ w[:-1]
    low, high = -60.0 - float(logits.max()), 60.0 - float(logits.min())  # mean score ~0 and ~1
    for _ in range(100):  # the mean score is increasing in the bias: bisect
        mid = (low + high) / 2
        low, high = (mid, high) if float(model.sigmoid(logits + mid).mean()) < prevalence else (low, mid)
    w[-1] = (low + high) / 2
    return w


def clipped_update_sum(x: np.ndarray, grad_e: np.ndarray, bound: float) -> np.ndarray:
    """sum_i c_i x1_i g_i' with c_i scaling each term x1_i g_i' (Frobenius norm |x1_i| |g_i|) to <= bound."""
    x1 = np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))])
    g = np.asarray(grad_e, dtype=np.float64)
    norms = np.linalg.norm(x1, axis=1) * np.linalg.norm(g, axis=1)
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    return np.asarray(x1.T @ (g * scale[:, None]))


def private_update(x: np.ndarray, grad_e: np.ndarray, p: Plan, rng: np.random.Generator | None = None) -> np.ndarray:
    """The bottom model's gradient (d + 1, h), bias last: clipped per example, noised, over the batch."""
    total = clipped_update_sum(x, grad_e, p.clip)
    total += _rng(rng).normal(0.0, p.noise_multiplier * 2 * p.clip, size=total.shape)
    return total / max(len(x), 1)


def private_preconditioner(x: np.ndarray, p: Plan, rng: np.random.Generator | None = None) -> np.ndarray:
    """(G~/n + ridge I)^-1 from a noisy Gram matrix G~ of the clipped rows [x, 1]; n is public
    (the aligned training set's size). Negative eigenvalues the noise may cause are floored at 0,
    and the ridge grows with the noise's spectral norm (about 2 sd sqrt(m) for m x m symmetric
    Gaussian noise of entry sd `sd`), so no noise direction is amplified beyond 1 / that."""
    x1 = clip_rows(np.hstack([np.asarray(x, dtype=np.float64), np.ones((len(x), 1))]), p.feature_clip)
    gram = x1.T @ x1
    sd = p.noise_multiplier * 2 * p.feature_clip**2
    noise = np.triu(_rng(rng).normal(0.0, sd, size=gram.shape))
    noisy = gram + noise + np.triu(noise, 1).T  # symmetric: the upper triangle is what is released
    vals, vecs = np.linalg.eigh(noisy / len(x1))
    vals = np.maximum(vals, 0.0) + RIDGE + 2 * sd * math.sqrt(len(gram)) / len(x1)
    return np.asarray((vecs / vals) @ vecs.T)
