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


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of mini-batch `step`: epochs are seeded permutations cut into batches."""
    per_epoch = max(1, -(-n // batch_size))
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return np.sort(order[k * batch_size : (k + 1) * batch_size])


def align(lists: Sequence[Sequence[str]]) -> list[str]:
    """Pseudonyms every participating node holds, in a canonical (sorted) order."""
    common = set(lists[0])
    for other in lists[1:]:
        common &= set(other)
    return sorted(common)


@dataclass
class Bottom:
    w: np.ndarray  # (d_k + 1, h), bias last
    opt_state: dict[str, np.ndarray | int]

    @classmethod
    def init(cls, d: int, h: int, seed: int, agency: str) -> Bottom:
        s = int.from_bytes(hashlib.sha256(f"{seed}:{agency}".encode()).digest()[:4], "big")
        w = np.random.default_rng(s).normal(0, 0.01, (d + 1, h))
        return cls(w, {})

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x @ self.w[:-1] + self.w[-1])

    def backward(self, x: np.ndarray, grad_e: np.ndarray, lr: float, l2: float) -> None:
        g = np.vstack([x.T @ grad_e + l2 * self.w[:-1], grad_e.sum(axis=0, keepdims=True)])
        self.w = _adam(self.w, g, lr, self.opt_state)


def _adam(w: np.ndarray, g: np.ndarray, lr: float, st: dict[str, np.ndarray | int]) -> np.ndarray:
    opt = model.Adam(lr, st.get("m"), st.get("v"), int(st.get("t", 0)))  # type: ignore[arg-type]
    w = opt.step(w, g)
    assert opt.m is not None and opt.v is not None
    st.update(m=opt.m, v=opt.v, t=opt.t)
    return w


@dataclass
class Top:
    w: np.ndarray  # (K*h + 1,), bias last
    opt_state: dict[str, np.ndarray | int]

    @classmethod
    def init(cls, width: int) -> Top:
        return cls(np.zeros(width + 1), {})

    def scores(self, e: np.ndarray) -> np.ndarray:
        return model.sigmoid(e @ self.w[:-1] + self.w[-1])

    def step(self, e: np.ndarray, y: np.ndarray, lr: float, l2: float) -> tuple[float, np.ndarray]:
        """One step on a batch: returns (loss, dL/dE) with L the mean binary cross-entropy."""
        p = self.scores(e)
        loss = model.bce(p, y)
        err = (p - y) / len(y)
        grad_e = np.outer(err, self.w[:-1])
        g = np.concatenate([e.T @ err + l2 * self.w[:-1], [err.sum()]])
        # The top starts at zero, so its first gradient w.r.t. E would be zero: bottoms only start
        # learning once the top has moved; one step's delay is harmless.
        self.w = _adam(self.w, g, lr, self.opt_state)
        return loss, grad_e


def pack_state(prefix: str, w: np.ndarray, st: dict[str, np.ndarray | int]) -> dict[str, np.ndarray]:
    out = {f"{prefix}w": w}
    if "m" in st:
        out.update({f"{prefix}m": np.asarray(st["m"]), f"{prefix}v": np.asarray(st["v"]),
                    f"{prefix}t": np.asarray(st["t"])})
    return out


def unpack_state(prefix: str, data: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray | int]]:
    st: dict[str, np.ndarray | int] = {}
    if f"{prefix}m" in data:
        st = {"m": data[f"{prefix}m"], "v": data[f"{prefix}v"], "t": int(data[f"{prefix}t"])}
    return data[f"{prefix}w"], st
