"""The record-DP holdout release (federated/holdout_dp.py): what the bins cost and what an attacker gets.

* `readout`: the coordinator's best attack on one held-out person's label (weights that put the
  victim alone in the top bin; every other held-out count known), run against the node's own
  release function, against the bound e^ε/(1+e^ε) and the Gaussian mechanism's Φ(1/(2z)).
* `bins`: on Census-Income's official test rows split over the four benchmark regions, a pooled
  logistic regression's held-out AUC estimated from noisy histograms, for several bin counts and
  ε, against the exact AUC (mean |error| over draws), and what clipping negative counts at zero
  would do instead of summing them as they are.

    python -m bench.holdout_dp [--quick]     # writes bench/results/holdout_dp.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from federated import census, holdout_dp, model, node
from federated.datasets import ElementInfo

RESULTS = Path(__file__).parent / "results" / "holdout_dp.json"
EPSILONS = (1.0, 4.0, 8.0)
DELTA = 1e-6


def _victim_histograms(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """100 held-out rows, ages 18-90 and a noisy label; the victim is 119, alone in the top bin."""
    age = rng.integers(18, 91, 100).astype(float)
    y = (age + rng.normal(0, 15, 100) > 55).astype(float)
    age[0], y[0] = 119, label
    logit = 40.0 * age / 120 + (11.75 - 40.0 * 119 / 120)
    return node.score_histograms(1 / (1 + np.exp(-logit)), y)


def readout(trials: int) -> dict[str, Any]:
    out: dict[str, Any] = {"trials_per_world": trials}
    top = int((11.75 + node.LOGIT_RANGE) / (2 * node.LOGIT_RANGE) * holdout_dp.BINS)
    worlds = [_victim_histograms(label, np.random.default_rng(7)) for label in (0, 1)]
    exact_pos, exact_neg = (holdout_dp.coarsened(h) for h in worlds[0])
    others = exact_pos[top], exact_neg[top] - 1
    rng = np.random.default_rng(5)
    for eps in EPSILONS:
        z = holdout_dp.noise_multiplier(eps, DELTA)
        right = 0
        for label, (pos, neg) in enumerate(worlds):
            for _ in range(trials):
                p, n = holdout_dp.release(pos, neg, z, rng)
                right += int((p[top] - others[0]) - (n[top] - others[1]) > 0) == label
        out[f"eps{eps:g}"] = {
            "noise_multiplier": z,
            "success": right / (2 * trials),
            "bound": math.exp(eps) / (1 + math.exp(eps)),
            "gaussian_optimum": NormalDist().cdf(1 / (2 * z)),
        }
    exact_right = 0  # the same test on the exact histograms (what a node answered before)
    for label, (pos, neg) in enumerate(worlds):
        p, n = holdout_dp.coarsened(pos), holdout_dp.coarsened(neg)
        exact_right += int((p[top] - others[0]) - (n[top] - others[1]) > 0) == label
    out["without_dp_success"] = exact_right / 2
    return out


def bins(draws: int, limit: int | None) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    data = census.load(limit=limit)
    infos = [data.columns[e] for e in census.features()]
    raw = np.column_stack([c.values for c in infos]).astype(float)
    x = model.encode([ElementInfo(e, c.type, c.min, c.max) for e, c in zip(census.features(), infos, strict=True)], raw)
    y, tr = data.label, ~data.test
    scores = LogisticRegression(max_iter=500).fit(x[tr], y[tr]).predict_proba(x)[:, 1]
    u = np.array([int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) / 2**32 for s in data.subjects])
    region = np.searchsorted(np.cumsum(census.REGION_SHARES), u, side="right").clip(0, len(census.REGION_SHARES) - 1)
    nodes = [node.score_histograms(scores[m], y[m]) for m in (data.test & (region == r) for r in range(4))]
    exact = model.auc(scores[data.test], y[data.test].astype(bool))
    rng = np.random.default_rng(1)
    rows = []
    for n_bins in (24, 48, 96):
        pos = sum(holdout_dp.coarsened(p, n_bins) for p, _ in nodes)
        neg = sum(holdout_dp.coarsened(n, n_bins) for _, n in nodes)
        row: dict[str, Any] = {"bins": n_bins, "coarseness_error": model.auc_from_histograms(pos, neg) - exact}
        for eps in EPSILONS:
            sd = holdout_dp.noise_multiplier(eps, DELTA) * holdout_dp.SENSITIVITY
            summed, clipped = [], []
            for _ in range(draws):
                noisy = [
                    (np.rint(holdout_dp.coarsened(p, n_bins) + rng.normal(0, sd, n_bins)),
                     np.rint(holdout_dp.coarsened(n, n_bins) + rng.normal(0, sd, n_bins)))
                    for p, n in nodes
                ]  # fmt: skip
                sp, sn = sum(p for p, _ in noisy), sum(n for _, n in noisy)
                summed.append(model.auc_from_histograms(sp, sn) - exact)
                clipped.append(model.auc_from_histograms(np.maximum(sp, 0), np.maximum(sn, 0)) - exact)
            row[f"eps{eps:g}"] = {
                "mean_abs_error": float(np.mean(np.abs(summed))),
                "mean_error": float(np.mean(summed)),
                "mean_error_if_clipped_at_zero": float(np.mean(clipped)),
            }
        rows.append(row)
    return {"rows": int(data.test.sum()), "exact_auc": exact, "draws": draws, "by_bins": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials and draws, a 30k-row subsample")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = {
        "delta": DELTA,
        "bins_used": holdout_dp.BINS,
        "readout": readout(2_000 if args.quick else 50_000),
        "auc_estimate": bins(20 if args.quick else 200, 30_000 if args.quick else 100_000),
    }
    out["wall_s"] = time.perf_counter() - t0
    path = RESULTS.with_name("holdout_dp-quick.json") if args.quick else RESULTS
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(json.dumps(out["readout"], indent=1), f"\nwrote {path}")


if __name__ == "__main__":
    main()
