"""Vertical split learning, pure part: bottom models at the nodes, top model at the label holder.

Model: node k maps its encoded features X_k to an embedding E_k = X_k W_k + b_k (dimension h);
the label holder's top model is logistic regression on [E_1 .. E_K] (its own bottom included).
Only E_k (forward) and dL/dE_k (backward) cross node boundaries, per mini-batch of the aligned
training rows; the batch schedule is a deterministic function of (seed, step), so no batch
indices need to travel. The composition is linear, i.e. the same model class as pooled logistic
regression, so pooled training is the fair baseline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federated import model

RIDGE = 1e-3


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of mini-batch `step`: each epoch is a seeded permutation cut into ceil(n / batch_size)
    batches whose sizes differ by at most one row, so no step runs on a small remainder (a
    Gauss-Newton step on a few hundred rows undid what the full ones had learned)."""
    per_epoch = max(1, -(-n // batch_size))
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return np.sort(np.array_split(order, per_epoch)[k])


def align(lists: Sequence[Sequence[str]]) -> list[str]:
    """Pseudonyms every participating node holds, in a canonical (sorted) order."""
    common = set(lists[0])
    for other in lists[1:]:
        common &= set(other)
    return sorted(common)


def preconditioner(x: np.ndarray, ridge: float) -> np.ndarray:
    """(X1'X1/n + ridge*I)^-1 with X1 = [X, 1]: computed from the node's own rows, never sent."""
    x1 = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    return np.asarray(np.linalg.inv(x1.T @ x1 / len(x) + ridge * np.eye(x1.shape[1])))


@dataclass
class Bottom:
    """Linear bottom model; steps are preconditioned by the node's local feature covariance.

    The update W -= lr * P X1' G / n moves the node's embeddings towards the least-squares
    projection of the received gradient onto what its features can express (a Gauss-Newton-like
    step that needs no extra information from the label holder); plain gradient steps on one-hot
    census features needed far more Flower rounds than that, this needs ~10. Gradients arrive
    normalised by the top model (see Top.step).
    """

    w: np.ndarray  # (d_k + 1, h), bias last
    opt_state: dict[str, np.ndarray | int]

    @classmethod
    def init(cls, d: int, h: int, seed: int, agency: str) -> Bottom:
        s = int.from_bytes(hashlib.sha256(f"{seed}:{agency}".encode()).digest()[:4], "big")
        w = np.random.default_rng(s).normal(0, 0.01, (d + 1, h))
        return cls(w, {})

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x @ self.w[:-1] + self.w[-1])

    def backward(self, x: np.ndarray, grad_e: np.ndarray, lr: float, precond: np.ndarray) -> None:
        """grad_e: per-sample dL/dE (rows of the batch)."""
        g = np.vstack([x.T @ grad_e, grad_e.sum(axis=0, keepdims=True)]) / len(x)
        self.apply(g, lr, precond)

    def apply(self, g: np.ndarray, lr: float, precond: np.ndarray) -> None:
        """One preconditioned step along g = dL/dW (d + 1, h), bias last (record-level DP: noisy g)."""
        self.w = self.w - lr * (precond @ g)


@dataclass
class Top:
    """Logistic regression on the concatenated embeddings, refitted by a few Newton steps per
    round (it is small: K*h + 1 weights, and lives with the labels at the label holder)."""

    w: np.ndarray  # (K*h + 1,), bias last
    opt_state: dict[str, np.ndarray | int]

    @classmethod
    def init(cls, width: int) -> Top:
        return cls(np.zeros(width + 1), {})

    def scores(self, e: np.ndarray) -> np.ndarray:
        return model.sigmoid(e @ self.w[:-1] + self.w[-1])

    def step(self, e: np.ndarray, y: np.ndarray, l2: float, h: int, newton_steps: int = 5) -> tuple[float, np.ndarray]:
        """Refit on a batch; returns (loss, per-sample dL/dE) at the refitted top weights, each
        node's block divided by the squared norm of its top weights t_k. The bottom step then
        changes the logit by about -lr * (projection of (p - y) on the node's features) whatever
        the scale of t_k, which keeps a fixed learning rate stable."""
        z = np.hstack([e, np.ones((len(e), 1))])
        reg = np.r_[np.full(len(self.w) - 1, l2), 0.0]
        for _ in range(newton_steps):
            p = model.sigmoid(z @ self.w)
            g = z.T @ (p - y) / len(y) + reg * self.w
            hess = (z * (p * (1 - p))[:, None]).T @ z / len(y) + np.diag(reg + 1e-6)
            self.w = self.w - np.linalg.solve(hess, g)
        p = model.sigmoid(z @ self.w)
        grad = np.outer(p - y, self.w[:-1])
        for k in range(0, len(self.w) - 1, h):
            t = self.w[k : k + h]
            grad[:, k : k + h] /= max(float(t @ t), 1e-12)
        return model.bce(p, y), grad


def pack_state(prefix: str, w: np.ndarray, st: dict[str, np.ndarray | int]) -> dict[str, np.ndarray]:
    out = {f"{prefix}w": w}
    if "m" in st:
        out.update(
            {f"{prefix}m": np.asarray(st["m"]), f"{prefix}v": np.asarray(st["v"]), f"{prefix}t": np.asarray(st["t"])}
        )
    return out


def unpack_state(prefix: str, data: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray | int]]:
    st: dict[str, np.ndarray | int] = {}
    if f"{prefix}m" in data:
        st = {"m": data[f"{prefix}m"], "v": data[f"{prefix}v"], "t": int(data[f"{prefix}t"])}
    return data[f"{prefix}w"], st


# -- embeddings and gradients on the wire -------------------------------------------------------

HALF_MAX_EXPONENT = 1024  # float64's range; float16 holds these integer exponents exactly (up to 2048)
HALF_FLUSH = 2.0**-1000  # a column whose largest magnitude is below this travels as zeros


def to_half(x: np.ndarray) -> np.ndarray:
    """A (rows, h) float matrix as float16 with one power-of-two scale per column: row 0 holds the
    exponents k_j, rows 1.. hold x[:, j] / 2**k_j, within [-1, 1]. A quarter of float64's bytes;
    each value within 2**-11 of its column's largest (gradients' columns span many orders of
    magnitude, which plain float16 would flush to zero; columns below 2**-1000 travel as zeros).
    Refuses non-finite values."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError("only a finite 2-d matrix travels as half precision")
    peak = np.abs(x).max(axis=0) if len(x) else np.zeros(x.shape[1])
    live = peak >= HALF_FLUSH
    k = np.where(live, np.frexp(np.where(live, peak, 1.0))[1], 0)  # peak < 2**k: exact power-of-two scaling
    return np.vstack([k[None, :], np.where(live, np.ldexp(x, -k), 0.0)]).astype(np.float16)


def from_half(a: np.ndarray) -> np.ndarray:
    """Inverse of `to_half` (float64)."""
    a = np.asarray(a)
    if a.dtype != np.float16 or a.ndim != 2 or len(a) < 1:
        raise ValueError("expected a half-precision matrix with its exponent row")
    k = a[0].astype(np.float64)
    if not np.all(np.isfinite(k)) or np.any(k != np.round(k)) or np.any(np.abs(k) > HALF_MAX_EXPONENT):
        raise ValueError("the exponent row of a half-precision matrix is malformed")
    return np.asarray(np.ldexp(a[1:].astype(np.float64), k.astype(np.int64)))
