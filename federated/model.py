"""Pure numpy models and metrics: feature encoding, logistic regression, vertical split model.

Feature encoding uses only the catalogue's declared type and range of each element, never
statistics of the data, so every horizontal node encodes identically without exchanging
anything, and a vertical node's encoding reveals nothing about its data distribution:
  flag -> 0/1; category -> one-hot over the declared 0..max codes; int -> log1p when the
  declared range is wide (money, counts), then min-max scaled to [0, 1] by the declared range.
Missing values encode as the declared minimum (all-zero one-hot for categories). The width is
thus fixed by the catalogue alone, so the server can initialise the model without asking a node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from federated.datasets import ElementInfo

WIDE_RANGE = 1000  # ints whose declared span exceeds this are log-scaled


def encoded_width(info: ElementInfo) -> int:
    if info.type == "category":
        return info.max - info.min + 1
    return 1


def encode(infos: Sequence[ElementInfo], raw: np.ndarray) -> np.ndarray:
    """Encode a (subjects x elements) raw matrix (NaN = missing) into float64 features."""
    blocks: list[np.ndarray] = []
    for j, info in enumerate(infos):
        col = raw[:, j]
        missing = np.isnan(col)
        x = np.where(missing, info.min, col)
        if info.type == "category":
            codes = np.clip(x.astype(np.int64) - info.min, 0, info.max - info.min)
            onehot = np.zeros((len(x), info.max - info.min + 1))
            onehot[np.arange(len(x)), codes] = 1.0
            onehot[missing] = 0.0
            blocks.append(onehot)
        elif info.type == "flag":
            blocks.append(np.clip(x, 0, 1)[:, None])
        else:
            lo, hi = float(info.min), float(info.max)
            x = np.clip(x, lo, hi)
            if hi - lo > WIDE_RANGE:
                x, lo, hi = np.log1p(x - lo), 0.0, float(np.log1p(hi - lo))
            blocks.append(((x - lo) / max(hi - lo, 1e-12))[:, None])
    return np.hstack(blocks) if blocks else np.zeros((raw.shape[0], 0))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -40, 40))))


def bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass
class Adam:
    """Adam state for one parameter array (used by vertical bottoms and the top model)."""

    lr: float
    m: np.ndarray | None = None
    v: np.ndarray | None = None
    t: int = 0

    def step(self, w: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(w), np.zeros_like(w)
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        mh = self.m / (1 - 0.9**self.t)
        vh = self.v / (1 - 0.999**self.t)
        return np.asarray(w - self.lr * mh / (np.sqrt(vh) + 1e-8))


# -- logistic regression (horizontal) ------------------------------------------------------------


def lr_init(n_features: int) -> np.ndarray:
    """Weights with the bias last."""
    return np.zeros(n_features + 1)


def lr_predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return sigmoid(x @ w[:-1] + w[-1])


def lr_train(
    w: np.ndarray, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch: int, l2: float, seed: int
) -> np.ndarray:
    """Mini-batch SGD on the mean binary cross-entropy, starting from w; returns new weights."""
    rng = np.random.default_rng(seed)
    w = w.copy()
    n = len(y)
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            err = lr_predict(w, x[idx]) - y[idx]
            grad = np.empty_like(w)
            grad[:-1] = x[idx].T @ err / len(idx) + l2 * w[:-1]
            grad[-1] = err.mean()
            w -= lr * grad
    return w


# -- metrics -------------------------------------------------------------------------------------


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC via the rank statistic (ties get average ranks)."""
    y = y.astype(bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from per-label score histograms (equal bins, ties within a bin count half)."""
    npos, nneg = pos.sum(), neg.sum()
    if npos == 0 or nneg == 0:
        return float("nan")
    neg_below = np.concatenate([[0], np.cumsum(neg)[:-1]])
    return float((pos * (neg_below + 0.5 * neg)).sum() / (npos * nneg))


def report(scores: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict[str, object]:
    pred = scores >= threshold
    yb = y.astype(bool)
    tp, fn = int((pred & yb).sum()), int((~pred & yb).sum())
    fp, tn = int((pred & ~yb).sum()), int((~pred & ~yb).sum())
    return {"auc": auc(scores, y), **counts_report(tp, fp, tn, fn)}


def counts_report(tp: int, fp: int, tn: int, fn: int) -> dict[str, object]:
    tpr = tp / (tp + fn) if tp + fn else float("nan")
    tnr = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "balanced_accuracy": (tpr + tnr) / 2,
        "confusion_matrix": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "n": tp + fp + tn + fn,
    }
