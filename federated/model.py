"""Pure numpy models and metrics: feature encoding, logistic regression, vertical split model.

Feature encoding follows each feature's method (`Encoding` in the job file) over the catalogue's
declared type and range. Catalogue defaults, used when the job names none:
  flag -> 0/1; category -> one-hot over the declared 0..max codes; int -> log when the declared
  range is wide (money, counts), else min-max scaled to [0, 1] by the declared range.
Other methods: `minmax`, `log` (log1p of the offset from the declared minimum, scaled to [0, 1]),
`onehot` (flags and int ranges of at most 256 codes), `buckets` (one-hot of the interval between
the job's edges). These use declared metadata only, so every horizontal node encodes identically
without exchanging anything and the width is fixed by the catalogue and the job: the server can
initialise the model without asking a node. `standardise` ((x - mean) / sd) needs statistics of
the data: in a vertical job each node computes them over its own training rows (`fit_stats`) and
they never leave it; in a horizontal job they are pooled over every node's training rows by a
statistics round of (secure) aggregation (federated/pooled_stats.py).
Missing values encode as the declared minimum (the mean for standardise; all-zero one-hot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from federated.datasets import ElementInfo
from federated.jobs import MAX_ONEHOT_CODES, Encoding, Method
from xgate.errors import InvalidInput

WIDE_RANGE = 1000  # ints whose declared span exceeds this are log-scaled by default


def default_encoding(info: ElementInfo) -> Encoding:
    if info.type == "category":
        return Encoding(method=Method.ONEHOT)
    if info.type == "flag":
        return Encoding(method=Method.MINMAX)
    return Encoding(method=Method.LOG if info.max - info.min > WIDE_RANGE else Method.MINMAX)


def resolve(infos: Sequence[ElementInfo], chosen: Mapping[str, Encoding] | None = None) -> list[Encoding]:
    """Each feature's encoding: the job's choice, else the catalogue default; refuses misfits."""
    out = []
    for info in infos:
        enc = (chosen or {}).get(info.id) or default_encoding(info)
        if info.type == "category" and enc.method is not Method.ONEHOT:
            raise InvalidInput(f"feature '{info.id}' is a category: only onehot encodes it")
        if info.type == "flag" and enc.method not in (Method.MINMAX, Method.ONEHOT):
            raise InvalidInput(f"feature '{info.id}' is a flag: minmax (0/1) or onehot")
        if enc.method is Method.ONEHOT and info.max - info.min + 1 > MAX_ONEHOT_CODES:
            raise InvalidInput(
                f"feature '{info.id}' spans {info.max - info.min + 1} codes: onehot takes at most "
                f"{MAX_ONEHOT_CODES} (use buckets)"
            )
        # An edge e splits x < e from x >= e: outside min < e <= max one side holds no value, and the
        # job would train on a column that is always 0 (an analyst's typo, accepted silently before).
        if outside := [e for e in enc.edges if not info.min < e <= info.max]:
            raise InvalidInput(
                f"feature '{info.id}': bucket edge(s) {', '.join(map(_number_text, outside))} outside its declared"
                f" range {info.min}..{info.max} leave a bucket no value can fall in (each edge e must have"
                f" {info.min} < e <= {info.max})"
            )
        out.append(enc)
    return out


def _number_text(x: float) -> str:
    """An edge as the analyst wrote it: 60000000, not 6e+07."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def encoded_width(info: ElementInfo, enc: Encoding | None = None) -> int:
    enc = enc or default_encoding(info)
    if enc.method is Method.ONEHOT:
        return info.max - info.min + 1
    if enc.method is Method.BUCKETS:
        return len(enc.edges) + 1
    return 1


Stats = dict[str, tuple[float, float]]  # element id -> (mean, sd) for standardised features


def fit_stats(infos: Sequence[ElementInfo], encs: Sequence[Encoding], raw: np.ndarray) -> Stats:
    """Mean and sd of each standardised feature over these rows (missing values ignored)."""
    stats: Stats = {}
    for j, (info, enc) in enumerate(zip(infos, encs, strict=True)):
        if enc.method is Method.STANDARDISE:
            col = raw[:, j][~np.isnan(raw[:, j])]
            mean = float(col.mean()) if len(col) else 0.0
            sd = float(col.std()) if len(col) > 1 else 0.0
            stats[info.id] = (mean, sd if sd > 1e-12 else 1.0)
    return stats


def encode(
    infos: Sequence[ElementInfo],
    raw: np.ndarray,
    encs: Sequence[Encoding] | None = None,
    stats: Stats | None = None,
) -> np.ndarray:
    """Encode a (subjects x elements) raw matrix (NaN = missing) into float64 features."""
    encs = list(encs) if encs is not None else resolve(infos)
    blocks: list[np.ndarray] = []
    for j, (info, enc) in enumerate(zip(infos, encs, strict=True)):
        col = raw[:, j]
        missing = np.isnan(col)
        x = np.clip(np.where(missing, info.min, col), info.min, info.max)
        lo, hi = float(info.min), float(info.max)
        if enc.method is Method.ONEHOT:
            codes = (x.astype(np.int64) - info.min).clip(0, info.max - info.min)
            blocks.append(_onehot(codes, info.max - info.min + 1, missing))
        elif enc.method is Method.BUCKETS:
            codes = np.searchsorted(np.asarray(enc.edges), x, side="right")
            blocks.append(_onehot(codes, len(enc.edges) + 1, missing))
        elif enc.method is Method.STANDARDISE:
            if stats is None or info.id not in stats:
                raise InvalidInput(f"feature '{info.id}' is standardised but its statistics were not computed")
            mean, sd = stats[info.id]
            blocks.append(np.where(missing, 0.0, (x - mean) / sd)[:, None])
        elif enc.method is Method.LOG:
            x, hi = np.log1p(x - lo), float(np.log1p(hi - lo))
            blocks.append((x / max(hi, 1e-12))[:, None])
        else:
            blocks.append(((x - lo) / max(hi - lo, 1e-12))[:, None])
    return np.hstack(blocks) if blocks else np.zeros((raw.shape[0], 0))


def _onehot(codes: np.ndarray, width: int, missing: np.ndarray) -> np.ndarray:
    out = np.zeros((len(codes), width))
    out[np.arange(len(codes)), codes] = 1.0
    out[missing] = 0.0
    return out


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
    if npos <= 0 or nneg <= 0:  # <: noisy (record-DP) counts can sum below zero
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
