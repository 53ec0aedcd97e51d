"""How record-level DP's clip, learning rate and rounds were chosen: in-process sweeps on Census-Income.

    python -m bench.dp_sweep [--quick] [--limit N]

The horizontal record-DP benchmark (bench/federated.py, `RECORD_DP`) trains logistic regression
over 4 regional nodes, 5 FedAvg rounds of 3 local epochs of DP-SGD each (federated/dp_sgd.py, the
nodes' own code: Poisson sampling, per-example clipping, Gaussian noise calibrated by the RDP
accountant). This replays that schedule in one process, without Flower (the aggregate is the
weighted mean SecAgg+ opens, up to its quantisation), for every (clip, learning rate, ε) on a grid,
and picks per ε the pair with the best AUC on a **validation** split carved from the training rows
(a keyed hash of the pseudonym, 20 %); the official test rows only report the chosen pair's AUC.

The vertical record-DP jobs get the same treatment: `vertical_dp_replay` replays split learning over
one node per agency (federated/vertical.py's bottoms and top, federated/vertical_dp.py's clipped and
noised embeddings, updates and preconditioner at the feature nodes) over a (rounds, learning rate)
grid at ε = 4, chosen on the same validation split. It steps without the pipelining of the real
job (whose embeddings are one update stale), which the Flower runs in bench/federated.py measure.

`--standardise` compares, at the Flower benchmark's clip and learning rate, the default encodings
against `standardise` for every integer feature with the statistics the job's statistics round
would give: pooled from each region's moment vector with record-level DP's noise
(`pooled_stats.noisy_moments`, accounted by `dp_sgd.plan(standardises=True)`), and, for reference,
from exact moments (what a job without DP pools). Writes bench/results/dp_standardise.json.

Tuning on the private data is itself a release DP-SGD does not account for: an agency would choose
on public or synthetic data of the same shape, as this sweep does on a public dataset, and use the
chosen values for its private one. Writes bench/results/dp_sweep.json.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.federated import RECORD_DP, RECORD_DP_CLIP, _encode
from federated import census, dp_sgd, model, pooled_stats, updates, vertical_dp
from federated.datasets import ElementInfo
from federated.jobs import Encoding, Method
from federated.vertical import RIDGE, Bottom, Top, batch_indices, preconditioner

RESULTS = Path(__file__).parent / "results" / "dp_sweep.json"
STANDARDISE_RESULTS = RESULTS.with_name("dp_standardise.json")
CLIPS = (0.5, 1.0, 2.0, 4.0)
LEARNING_RATES = (2.0, 4.0, 8.0, 16.0)
EPSILONS = (1.0, 4.0, 8.0)
DELTA = 1e-6
VERTICAL_ROUNDS = (2, 3, 6)
VERTICAL_LEARNING_RATES = (1.5, 3.0)
VERTICAL_CLIP = 1.0  # bench.federated.VERTICAL_DP_CLIP


@dataclass(frozen=True)
class Split:
    nodes: list[tuple[np.ndarray, np.ndarray]]  # each region's training rows (validation rows removed)
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def _unit_hash(subjects: list[str], salt: str) -> np.ndarray:
    return np.array([int(hashlib.sha256(f"{salt}{s}".encode()).hexdigest()[:8], 16) / 2**32 for s in subjects])


def _regions(data: census.Census) -> tuple[np.ndarray, np.ndarray]:
    """Each row's region (census.horizontal_nodes' split) and the training rows (20 % set aside)."""
    region = np.searchsorted(np.cumsum(census.REGION_SHARES), _unit_hash(data.subjects, ""), side="right")
    held = _unit_hash(data.subjects, "dp-sweep-validation:") < 0.2
    return region.clip(0, len(census.REGION_SHARES) - 1), ~data.test & ~held


def split(data: census.Census, x: np.ndarray | None = None) -> Split:
    x = _encode(data, census.features()) if x is None else x
    y = data.label.astype(float)
    region, train = _regions(data)
    held = ~data.test & ~train
    nodes = [(x[train & (region == r)], y[train & (region == r)]) for r in range(len(census.REGION_SHARES))]
    return Split(nodes, (x[held], y[held]), (x[data.test], y[data.test]))


def federated_dp_sgd(
    s: Split, *, epsilon: float, clip: float, lr: float, seed: int = 0, standardises: bool = False
) -> np.ndarray:
    """RECORD_DP's schedule: per round each node runs DP-SGD from the global model; the weighted mean
    of the nodes' (xgate-clipped) updates moves the global model."""
    rounds, epochs, batch = int(RECORD_DP["rounds"]), int(RECORD_DP["local_epochs"]), int(RECORD_DP["batch_size"])
    bound = float(RECORD_DP["update_bound"])
    rng = np.random.default_rng(seed)
    w = model.lr_init(s.nodes[0][0].shape[1])
    plans = [
        dp_sgd.plan(
            epsilon, DELTA, clip, n=len(y), batch=batch, rounds=rounds, local_epochs=epochs, standardises=standardises
        )
        for _, y in s.nodes
    ]
    for _ in range(rounds):
        prepared = []
        for (x, y), plan in zip(s.nodes, plans, strict=True):
            w1 = dp_sgd.train(w, x, y, plan, lr=lr, l2=1e-4, rng=rng)
            p = updates.prepare_update([w1 - w], [w.shape], len(y), bound=bound, max_weight=10**7)
            prepared.append((p.arrays, p.weight))
        w = w + updates.weighted_mean(prepared)[0]
    return w


@dataclass(frozen=True)
class VerticalSplit:
    train: dict[str, np.ndarray]  # agency -> encoded training rows (validation rows removed)
    validation: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    raw_features: dict[str, int]
    y_train: np.ndarray
    y_validation: np.ndarray
    y_test: np.ndarray


def vertical_split(data: census.Census) -> VerticalSplit:
    held = _unit_hash(data.subjects, "dp-sweep-validation:") < 0.2
    train, val, test = ~data.test & ~held, ~data.test & held, data.test
    x = {a: _encode(data, [census.element_id(a, c) for c in cols]) for a, cols in census.AGENCIES.items()}
    y = data.label.astype(float)
    return VerticalSplit(
        {a: v[train] for a, v in x.items()},
        {a: v[val] for a, v in x.items()},
        {a: v[test] for a, v in x.items()},
        {a: len(cols) for a, cols in census.AGENCIES.items()},
        y[train],
        y[val],
        y[test],
    )


@dataclass(frozen=True)
class VerticalModel:
    bottoms: dict[str, Bottom]
    top: Top

    def auc(self, rows: dict[str, np.ndarray], y: np.ndarray) -> float:
        # Evaluation embeddings travel clipped, not noised (as the ClientApp sends held-out rows).
        e = [
            b.forward(rows[a]) if a == census.LABEL_HOLDER else vertical_dp.clip_rows(b.forward(rows[a]), VERTICAL_CLIP)
            for a, b in self.bottoms.items()
        ]
        return float(model.report(self.top.scores(np.hstack(e)), y, threshold=float(y.mean()))["auc"])


def vertical_dp_replay(
    s: VerticalSplit, *, epsilon: float, rounds: int, lr: float, h: int = 4, seed: int = 0
) -> VerticalModel:
    """Split learning with record-level DP at every feature node (full batches, as the job runs)."""
    rng = np.random.default_rng(seed)
    n = len(s.y_train)
    agencies = list(s.train)
    bottoms = {a: Bottom.init(s.train[a].shape[1], h, 0, a) for a in agencies}
    plans, precond = {}, {}
    for a in agencies:
        if a == census.LABEL_HOLDER:
            precond[a] = preconditioner(s.train[a], RIDGE)
            continue
        plans[a] = vertical_dp.plan(
            epsilon, DELTA, VERTICAL_CLIP, n=n, batch=n, rounds=rounds, raw_features=s.raw_features[a]
        )
        precond[a] = vertical_dp.private_preconditioner(s.train[a], plans[a], rng)
    top = Top.init(len(agencies) * h)
    for t in range(rounds):
        idx = batch_indices(n, n, t, 0)
        embs = []
        for a in agencies:
            e = bottoms[a].forward(s.train[a][idx])
            embs.append(vertical_dp.private_embeddings(e, plans[a], rng) if a in plans else e)
        _, grad = top.step(np.hstack(embs), s.y_train[idx], 1e-4, h)
        for i, a in enumerate(agencies):
            g = grad[:, i * h : (i + 1) * h]
            if a in plans:
                bottoms[a].apply(vertical_dp.private_update(s.train[a][idx], g, plans[a], rng), lr, precond[a])
            else:
                bottoms[a].backward(s.train[a][idx], g, lr, precond[a])
    return VerticalModel(bottoms, top)


def _auc(w: np.ndarray, xy: tuple[np.ndarray, np.ndarray]) -> float:
    return float(model.report(model.lr_predict(w, xy[0]), xy[1], threshold=float(xy[1].mean()))["auc"])


def standardised_encoding(data: census.Census, *, noisy: bool, seed: int) -> np.ndarray:
    """Every integer feature standardised with the statistics round's pooled mean and sd: from each
    region's moment vector over its training rows, noised as record-level DP does when `noisy`."""
    elements = census.features()
    infos = [ElementInfo(e, data.columns[e].type, data.columns[e].min, data.columns[e].max) for e in elements]
    raw = np.column_stack([data.columns[e].values for e in elements]).astype(float)
    encs = [Encoding(method=Method.STANDARDISE) if i.type == "int" else model.resolve([i])[0] for i in infos]
    region, train = _regions(data)
    rng = np.random.default_rng([seed, 17])
    vectors = []
    for r in range(len(census.REGION_SHARES)):
        rows = raw[train & (region == r)]
        m = pooled_stats.moments(infos, encs, rows)
        if noisy:
            m = pooled_stats.noisy_moments(m, len(rows), dp_sgd.STATS_NOISE_MULTIPLIER, rng)
        vectors.append(([m], len(rows)))
    noise_sd = 0.0
    if noisy:
        features = len(pooled_stats.standardised(infos, encs))
        noise_sd = pooled_stats.pooled_noise_sd(features, [w for _, w in vectors], dp_sgd.STATS_NOISE_MULTIPLIER)
    stats = pooled_stats.pooled_stats(infos, encs, updates.weighted_mean(vectors)[0], noise_sd=noise_sd)
    return model.encode(infos, raw, encs, stats)


def standardise_comparison(limit: int, seeds: int) -> dict[str, Any]:
    """Test AUC per epsilon: default encodings against standardise with DP-noised (and exact) statistics."""
    data = census.load(limit=limit)
    clip, lr = RECORD_DP_CLIP, float(RECORD_DP["learning_rate"])
    out: dict[str, Any] = {"rows": limit, "clip": clip, "learning_rate": lr, "seeds": seeds, "delta": DELTA}
    default = split(data)
    for eps in EPSILONS:
        for label in ("default", "standardise_dp_stats", "standardise_exact_stats"):
            aucs = []
            for seed in range(seeds):
                if label == "default":
                    s, standardises = default, False
                else:  # fresh statistics noise per seed, as a fresh job would draw
                    noisy = label == "standardise_dp_stats"
                    s = split(data, standardised_encoding(data, noisy=noisy, seed=seed))
                    standardises = noisy  # the exact statistics are not a DP release: reference only
                w = federated_dp_sgd(s, epsilon=eps, clip=clip, lr=lr, seed=seed, standardises=standardises)
                aucs.append(_auc(w, s.test))
            out[f"eps{eps:g}_{label}"] = {"test_auc_mean": float(np.mean(aucs)), "test_auc": aucs}
            print(f"eps {eps:g} {label}: {np.mean(aucs):.4f} {aucs}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30k rows, a 2 x 2 grid")
    ap.add_argument("--limit", type=int, default=100_000, help="rows (seeded subsample; bench.federated's size)")
    ap.add_argument("--standardise", action="store_true", help="only the standardise-under-DP comparison")
    ap.add_argument("--seeds", type=int, default=3, help="with --standardise: runs per arm and epsilon")
    args = ap.parse_args()
    if args.standardise:
        t0 = time.perf_counter()
        result = standardise_comparison(30_000 if args.quick else args.limit, 1 if args.quick else args.seeds)
        result["wall_s"] = time.perf_counter() - t0
        out = STANDARDISE_RESULTS.with_name("dp_standardise-quick.json") if args.quick else STANDARDISE_RESULTS
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"-> {out}")
        return
    limit, clips, rates = (30_000, (0.5, 2.0), (4.0, 8.0)) if args.quick else (args.limit, CLIPS, LEARNING_RATES)
    t0 = time.perf_counter()
    s = split(census.load(limit=limit))
    grid: list[dict[str, Any]] = []
    for eps, clip, lr in itertools.product(EPSILONS, clips, rates):
        w = federated_dp_sgd(s, epsilon=eps, clip=clip, lr=lr)
        grid.append({"epsilon": eps, "clip": clip, "learning_rate": lr, "validation_auc": _auc(w, s.validation)})
        print(json.dumps(grid[-1]), flush=True)
    vs = vertical_split(census.load(limit=limit))
    vgrid: list[dict[str, Any]] = []
    for rounds, lr in itertools.product(VERTICAL_ROUNDS if not args.quick else (2, 6), VERTICAL_LEARNING_RATES):
        fitted = vertical_dp_replay(vs, epsilon=4.0, rounds=rounds, lr=lr)
        vgrid.append({"epsilon": 4.0, "rounds": rounds, "learning_rate": lr,
                      "validation_auc": fitted.auc(vs.validation, vs.y_validation)})  # fmt: skip
        print(json.dumps(vgrid[-1]), flush=True)
    vbest = max(vgrid, key=lambda g: g["validation_auc"])
    vchosen = {}
    for eps in EPSILONS:
        fitted = vertical_dp_replay(vs, epsilon=eps, rounds=vbest["rounds"], lr=vbest["learning_rate"], seed=1)
        vchosen[f"eps{eps:g}"] = {
            "rounds": vbest["rounds"],
            "learning_rate": vbest["learning_rate"],
            "validation_auc": fitted.auc(vs.validation, vs.y_validation),
            "test_auc": fitted.auc(vs.test, vs.y_test),
        }
    chosen: dict[str, Any] = {}
    for eps in EPSILONS:
        best = max((g for g in grid if g["epsilon"] == eps), key=lambda g: g["validation_auc"])
        w = federated_dp_sgd(s, epsilon=eps, clip=best["clip"], lr=best["learning_rate"], seed=1)  # fresh noise
        chosen[f"eps{eps:g}"] = {**best, "test_auc": _auc(w, s.test)}
    # One setting for every epsilon (what a job file fixes before its epsilon is known): the pairs by
    # mean validation AUC over the epsilons.
    pairs: dict[tuple[float, float], list[float]] = {}
    for g in grid:
        pairs.setdefault((g["clip"], g["learning_rate"]), []).append(g["validation_auc"])
    by_mean = sorted(
        ({"clip": c, "learning_rate": lr, "mean_validation_auc": float(np.mean(v))} for (c, lr), v in pairs.items()),
        key=lambda r: -r["mean_validation_auc"],
    )
    out = {
        "rows": limit,
        "by_mean_over_epsilons": by_mean,
        "schedule": {k: RECORD_DP[k] for k in ("rounds", "local_epochs", "batch_size", "update_bound")},
        "delta": DELTA,
        "grid": grid,
        "chosen": chosen,
        "vertical": {"clip": VERTICAL_CLIP, "embedding_dim": 4, "grid": vgrid, "chosen": vchosen},
        "wall_s": time.perf_counter() - t0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(json.dumps(chosen, indent=1), f"-> {RESULTS}")


if __name__ == "__main__":
    main()
