"""How record-level DP's clip, learning rate and rounds were chosen: in-process sweeps on Census-Income.

    python -m bench.dp_sweep [--quick] [--limit N]

The horizontal record-DP benchmark (bench/federated.py, `RECORD_DP`) trains logistic regression
over 4 regional nodes, 5 FedAvg rounds of 3 local epochs of DP-SGD each (federated/dp_sgd.py, the
nodes' own code: Poisson sampling, per-example clipping, Gaussian noise calibrated by the RDP
accountant). This replays that schedule in one process, without Flower (the aggregate is the
weighted mean SecAgg+ opens, up to its quantisation), for every (clip, learning rate, ε) on a grid,
and picks per ε the pair with the best AUC on a **validation** split carved from the training rows
(a keyed hash of the pseudonym, 20 %); the official test rows only report the chosen pair's AUC.

The vertical record-DP jobs get the same treatment: `vertical_arm_replay` (arm `per_node_noise`:
the job's noise, before the label holder de-attenuates its top weights) replays split learning over
one node per agency (federated/vertical.py's bottoms and top, federated/vertical_dp.py's clipped and
noised embeddings, updates and preconditioner at the feature nodes) over a (rounds, learning rate)
grid at ε = 4, chosen on the same validation split. It steps without the pipelining of the real
job (whose embeddings are one update stale), which the Flower runs in bench/federated.py measure.

`--vertical-options` replays the vertical record-DP job at its chosen settings with alternatives a
label holder could use on the same noisy embeddings (`VERTICAL_ARMS`: secure summation of the
feature nodes' embeddings with the noise shared out, regression calibration of the noisy
embeddings, de-attenuated top weights) and, for reference, without the embedding noise. Writes
bench/results/dp_vertical_options.json.

`--vertical-ceiling` replays split learning with neither clipping nor noise (arm `NO_DP`) for 1, 2,
3 and 10 steps against pooled logistic regression on the same rows: what the protocol's structure
allows before any privacy is spent. Writes bench/results/dp_vertical_ceiling.json.

`--stacked` replays a stacked vertical job (`vertical_scheme = "stacked"`: each feature node's
logistic regression trained by DP-SGD on the labels, the top fitted over the parts' scores on half
the rows) for each part-training setting in `STACKED_SETTINGS` at ε = 1, 4, 8, chosen by mean
validation AUC. Writes bench/results/dp_stacked.json.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from bench.federated import RECORD_DP, RECORD_DP_CLIP, VERTICAL_DP_LEARNING_RATE, VERTICAL_DP_ROUNDS, _encode
from federated import census, dp_sgd, model, pooled_stats, top_calibration, updates, vertical_dp
from federated.datasets import ElementInfo
from federated.jobs import VERTICAL_BATCH, Encoding, Method
from federated.vertical import RIDGE, Bottom, Top, batch_indices, preconditioner

RESULTS = Path(__file__).parent / "results" / "dp_sweep.json"
STANDARDISE_RESULTS = RESULTS.with_name("dp_standardise.json")
VERTICAL_OPTIONS_RESULTS = RESULTS.with_name("dp_vertical_options.json")
CEILING_RESULTS = RESULTS.with_name("dp_vertical_ceiling.json")
STACKED_RESULTS = RESULTS.with_name("dp_stacked.json")
CLIPS = (0.5, 1.0, 2.0, 4.0)
LEARNING_RATES = (2.0, 4.0, 8.0, 16.0)
EPSILONS = (1.0, 4.0, 8.0)
DELTA = 1e-6
VERTICAL_ROUNDS = (1, 2, 3, 6)
VERTICAL_LEARNING_RATES = (1.5, 3.0)
VERTICAL_BATCHES = (VERTICAL_BATCH, 0)  # 0: every training row in every step (full batches)
VERTICAL_CLIP = 1.0  # bench.federated.VERTICAL_DP_CLIP
# The calibrated top (federated/top_calibration.py) changes what the bottoms' scale costs (the
# held-out embeddings are clipped, the top is refitted): its own sweep, at the default batch.
CALIBRATED_ROUNDS = (1, 2, 3)
CALIBRATED_LEARNING_RATES = (1.5, 2.0, 2.5, 3.0)
CALIBRATION_SHARE = 0.5


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
            epsilon,
            DELTA,
            clip,
            rows=dp_sgd.noisy_rows(len(y), rng),  # as the nodes plan: from their noisy count
            batch=batch,
            rounds=rounds,
            local_epochs=epochs,
            standardises=standardises,
        )
        for _, y in s.nodes
    ]
    for _ in range(rounds):
        prepared = []
        for (x, y), plan in zip(s.nodes, plans, strict=True):
            w1 = dp_sgd.train(w, x, y, plan, lr=lr, l2=1e-4, rng=rng)
            p = updates.prepare_update([w1 - w], [w.shape], round(plan.rows), bound=bound, max_weight=10**7)
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


# Ways the label holder could get more out of the same noisy embeddings, each replayed at the
# job's chosen settings (`vertical_options`). The (rounds, learning rate) sweep replays
# `per_node_noise` (chosen before the job de-attenuated; `deattenuated_top` is what it does now).
VERTICAL_ARMS = (
    "per_node_noise",  # each feature node adds its own noise to its embedding block (the job's noise)
    "secure_sum",  # the feature nodes' blocks summed under pairwise masks; each adds sigma/sqrt(K-1)
    "regression_calibration",  # the top fits on E[clean | noisy] (best linear predictor)
    "deattenuated_top",  # the fitted top's feature-node weights divided by each block's reliability
    "calibrated_top",  # `top_calibration`: the top refitted on half the held-out rows' clean embeddings
    "no_embedding_noise",  # not private: what the embedding noise alone costs
)
# Not one of the options above but their reference (`--vertical-ceiling`): split learning with neither
# clipping nor noise, the top as calibrated_top's.
NO_DP = "no_dp"


def _counted_half(y: np.ndarray) -> np.ndarray:
    """The held-out rows a calibrated top is scored on; it is fitted on the others (a fixed draw)."""
    return np.asarray(np.random.default_rng(len(y)).random(len(y)) >= CALIBRATION_SHARE)


def _blp(e: np.ndarray, noise_var: np.ndarray) -> np.ndarray:
    """E[clean | noisy] for independent Gaussian noise of known per-column variance: the best linear
    predictor mu + (E - mu) C^-1 (C - D), with C - D's eigenvalues floored at 1e-6."""
    mu, c = e.mean(axis=0), np.cov(e, rowvar=False)
    vals, vecs = np.linalg.eigh(c - np.diag(noise_var))
    clean = (vecs * np.maximum(vals, 1e-6)) @ vecs.T
    return np.asarray(mu + (e - mu) @ np.linalg.solve(c, clean))


def vertical_arm_replay(
    s: VerticalSplit,
    arm: str,
    *,
    epsilon: float,
    rounds: int,
    lr: float,
    batch: int = VERTICAL_BATCH,
    h: int = 4,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Split learning with record-level DP at every feature node (the job's batch schedule), the
    label holder using one of `VERTICAL_ARMS` (or `NO_DP`); returns (validation AUC, test AUC, noise sd per
    embedding coordinate in units of the clip). Evaluation embeddings travel clipped, not noised
    (as the ClientApp sends held-out rows)."""
    rng = np.random.default_rng(seed)
    n = len(s.y_train)
    label = census.LABEL_HOLDER
    feats = [a for a in s.train if a != label]
    bottoms = {a: Bottom.init(s.train[a].shape[1], h, 0, a) for a in s.train}
    plans = {
        a: vertical_dp.plan(
            epsilon, DELTA, VERTICAL_CLIP, n=n, batch=batch, rounds=rounds, raw_features=s.raw_features[a]
        )
        for a in feats
    }
    clean = arm == NO_DP  # the protocol's structure alone: exact preconditioners, no clip, no noise
    precond = {
        a: preconditioner(s.train[a], RIDGE) if clean else vertical_dp.private_preconditioner(s.train[a], plans[a], rng)
        for a in feats
    }
    precond[label] = preconditioner(s.train[label], RIDGE)
    sd = plans[feats[0]].noise_multiplier * 2 * VERTICAL_CLIP  # the same for every feature node
    summed = arm == "secure_sum"
    sd_node = 0.0 if arm in ("no_embedding_noise", NO_DP) else sd / np.sqrt(len(feats)) if summed else sd
    blocks = 2 if summed else 1 + len(feats)
    block_var = sd_node**2 * (len(feats) if summed else 1)  # a sum carries every node's share
    noise_var = np.r_[np.zeros(h), np.full((blocks - 1) * h, block_var)]
    top = Top.init(blocks * h)
    reliability = np.ones(blocks * h)

    def features(rows: dict[str, np.ndarray], noisy: bool) -> np.ndarray:
        own = bottoms[label].forward(rows[label])
        e = [bottoms[a].forward(rows[a]) for a in feats]
        if not clean:
            e = [vertical_dp.clip_rows(x, VERTICAL_CLIP) for x in e]
        if noisy:
            e = [x + rng.normal(0.0, sd_node, size=x.shape) for x in e]
        return np.hstack([own, sum(e)] if summed else [own, *e])

    for t in range(rounds):
        idx = batch_indices(n, batch, t, 0)
        e = features({a: x[idx] for a, x in s.train.items()}, noisy=True)
        var = e.var(axis=0)
        reliability = np.clip((var - noise_var) / np.maximum(var, 1e-12), 0.02, 1.0)
        if arm == "regression_calibration":
            e = _blp(e, noise_var)
        _, grad = top.step(e, s.y_train[idx], 1e-4, h)
        bottoms[label].backward(s.train[label][idx], grad[:, :h], lr, precond[label])
        for i, a in enumerate(feats):
            g = grad[:, h : 2 * h] if summed else grad[:, (i + 1) * h : (i + 2) * h]
            if clean:
                bottoms[a].backward(s.train[a][idx], g, lr, precond[a])
            else:
                bottoms[a].apply(vertical_dp.private_update(s.train[a][idx], g, plans[a], rng), lr, precond[a])
    w = top.w.copy()
    if arm == "deattenuated_top":
        w[:-1] = w[:-1] / reliability

    def auc(rows: dict[str, np.ndarray], y: np.ndarray) -> float:
        e = features(rows, noisy=False)
        if arm in ("calibrated_top", NO_DP):  # fitted on a fixed half of these rows, scored on the other
            counted = _counted_half(y)
            top_w = top_calibration.calibrated_top(e[~counted], y[~counted], 1e-4, h)
            e, y = e[counted], y[counted]
        else:
            top_w = w
        scores = model.sigmoid(e @ top_w[:-1] + top_w[-1])
        return float(model.report(scores, y, threshold=float(y.mean()))["auc"])

    return auc(s.validation, s.y_validation), auc(s.test, s.y_test), sd / VERTICAL_CLIP


def vertical_options(limit: int, seeds: int, rounds: int, lr: float, batch: int = VERTICAL_BATCH) -> dict[str, Any]:
    """Every arm at every epsilon, `seeds` noise draws each (the split and initial weights fixed)."""
    vs = vertical_split(census.load(limit=limit))
    arms: dict[str, Any] = {}
    for arm in VERTICAL_ARMS:
        for eps in EPSILONS:
            runs = [
                vertical_arm_replay(vs, arm, epsilon=eps, rounds=rounds, lr=lr, batch=batch, seed=k)
                for k in range(seeds)
            ]
            arms.setdefault(arm, {})[f"eps{eps:g}"] = {
                "validation_auc": [round(r[0], 4) for r in runs],
                "test_auc": [round(r[1], 4) for r in runs],
                "test_auc_mean": round(float(np.mean([r[1] for r in runs])), 4),
                "test_auc_min": round(float(np.min([r[1] for r in runs])), 4),
                "noise_sd_per_clip": round(runs[0][2], 2),
            }
            print(json.dumps({"arm": arm, "epsilon": eps, **arms[arm][f"eps{eps:g}"]}), flush=True)
    return {
        "rows": limit,
        "batch_size": batch,
        "rounds": rounds,
        "learning_rate": lr,
        "clip": VERTICAL_CLIP,
        "seeds": seeds,
        "arms": arms,
    }


CEILING_ROUNDS = (1, 2, 3, 10)
CEILING_LEARNING_RATES = (1.5, 2.0, 2.5)


def vertical_ceiling(limit: int, seeds: int) -> dict[str, Any]:
    """What split learning's structure allows, before any privacy: per number of steps, the best
    learning rate on the validation split with neither clipping nor noise (arm `NO_DP`, the top
    calibrated as a `top_calibration` job's), its test AUC on the rows the top is not fitted on,
    against pooled logistic regression on the same training rows and counted test rows; and the
    record-DP job as bench.federated runs it (`calibrated_top`) at epsilon 4 over `seeds` noise draws."""
    vs = vertical_split(census.load(limit=limit))
    x = np.hstack([vs.train[a] for a in vs.train])
    pooled = LogisticRegression(max_iter=1000).fit(x, vs.y_train)
    counted = _counted_half(vs.y_test)
    test_x = np.hstack([vs.test[a] for a in vs.test])[counted]
    pooled_auc = float(model.auc(pooled.predict_proba(test_x)[:, 1], vs.y_test[counted]))
    steps: dict[str, Any] = {}
    for rounds in CEILING_ROUNDS:
        runs = {lr: vertical_arm_replay(vs, NO_DP, epsilon=1.0, rounds=rounds, lr=lr) for lr in CEILING_LEARNING_RATES}
        lr = max(runs, key=lambda r: runs[r][0])
        steps[str(rounds)] = {
            "learning_rate": lr,
            "validation_auc": round(runs[lr][0], 4),
            "test_auc": round(runs[lr][1], 4),
        }
        print(json.dumps({"rounds": rounds, **steps[str(rounds)]}), flush=True)
    job = {"rounds": VERTICAL_DP_ROUNDS, "learning_rate": VERTICAL_DP_LEARNING_RATE}  # bench.federated's DP job
    eps4 = [
        vertical_arm_replay(vs, "calibrated_top", epsilon=4.0, rounds=job["rounds"], lr=job["learning_rate"], seed=k)[1]
        for k in range(seeds)
    ]
    return {
        "rows": limit,
        "pooled_test_auc": round(pooled_auc, 4),
        "no_dp_by_steps": steps,
        "record_dp_job": job,
        "record_dp_eps4_test_auc": [round(a, 4) for a in eps4],
        "goal_eps4": round(pooled_auc - 0.01, 4),
    }


# A stacked job's part training (federated/jobs.py STACKED_DEFAULTS first), each a DP-SGD schedule.
STACKED_SETTINGS = (
    {"local_epochs": 5, "learning_rate": 4.0, "clip": 2.0, "batch_size": 512},
    {"local_epochs": 15, "learning_rate": 4.0, "clip": 2.0, "batch_size": 512},
    {"local_epochs": 15, "learning_rate": 4.0, "clip": 1.0, "batch_size": 512},
    {"local_epochs": 15, "learning_rate": 2.0, "clip": 1.0, "batch_size": 512},
    {"local_epochs": 15, "learning_rate": 4.0, "clip": 2.0, "batch_size": 1024},
)


def _stacked_scores(
    vs: VerticalSplit, setting: dict[str, Any], epsilon: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test scores of every part as a stacked job trains them: the label holder's by
    plain SGD on its own features, each feature node's by DP-SGD over the training rows (the
    aligned count public: no count release), the labels the label holder's true ones."""
    rng = np.random.default_rng(seed)
    n = len(vs.y_train)
    val, test = [], []
    for agency, x in vs.train.items():
        w = model.lr_init(x.shape[1])
        epochs, lr, batch = setting["local_epochs"], setting["learning_rate"], setting["batch_size"]
        if agency == census.LABEL_HOLDER:
            w = model.lr_train(w, x, vs.y_train, epochs=epochs, lr=lr, batch=batch, l2=1e-4, seed=0)
        else:
            plan = dp_sgd.plan(
                epsilon,
                DELTA,
                setting["clip"],
                rows=float(n),
                batch=batch,
                rounds=1,
                local_epochs=epochs,
                count_sigma=None,
            )
            w = dp_sgd.train(w, x, vs.y_train, plan, lr=lr, l2=1e-4, rng=rng)
        val.append(vs.validation[agency] @ w[:-1] + w[-1])
        test.append(vs.test[agency] @ w[:-1] + w[-1])
    return np.column_stack(val), np.column_stack(test)


def _stacked_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """The top (a weight per part and a bias) fitted on half the rows, the AUC on the other half."""
    counted = _counted_half(y)
    top = top_calibration.calibrated_top(scores[~counted], y[~counted], 1e-4, 1)
    return float(model.auc(Top(top, {}).scores(scores[counted]), y[counted]))


def stacked_sweep(limit: int, seeds: int) -> dict[str, Any]:
    """A stacked job's part training: every setting at every epsilon, `seeds` noise draws each,
    scored on the validation split (the top fitted on half of it); the best by mean validation AUC
    over the epsilons (a job file fixes it before its epsilon is known), then its test AUC on fresh
    noise against pooled logistic regression on the same counted test rows."""
    vs = vertical_split(census.load(limit=limit))
    grid = []
    for k, setting in enumerate(STACKED_SETTINGS):
        for eps in EPSILONS:
            aucs = [_stacked_auc(_stacked_scores(vs, setting, eps, seed)[0], vs.y_validation) for seed in range(seeds)]
            grid.append({"setting": k, **setting, "epsilon": eps, "validation_auc": round(float(np.mean(aucs)), 4)})
            print(json.dumps(grid[-1]), flush=True)
    mean = {
        k: float(np.mean([g["validation_auc"] for g in grid if g["setting"] == k]))
        for k in range(len(STACKED_SETTINGS))
    }
    best = max(mean, key=lambda k: mean[k])
    x = np.hstack([vs.train[a] for a in vs.train])
    pooled = LogisticRegression(max_iter=1000).fit(x, vs.y_train)
    counted = _counted_half(vs.y_test)
    test_x = np.hstack([vs.test[a] for a in vs.test])[counted]
    pooled_auc = float(model.auc(pooled.predict_proba(test_x)[:, 1], vs.y_test[counted]))
    chosen = {
        f"eps{eps:g}": round(_stacked_auc(_stacked_scores(vs, STACKED_SETTINGS[best], eps, 1000)[1], vs.y_test), 4)
        for eps in EPSILONS
    }
    return {
        "rows": limit,
        "delta": DELTA,
        "grid": grid,
        "mean_validation_auc": {str(k): round(v, 4) for k, v in mean.items()},
        "chosen": {**STACKED_SETTINGS[best], "index": best},
        "test_auc": chosen,
        "pooled_test_auc": round(pooled_auc, 4),
    }


def vertical_sweep(limit: int, *, quick: bool = False, seeds: int = 2, arm: str = "deattenuated_top") -> dict[str, Any]:
    """The vertical record-DP job's (batch, rounds, learning rate), as the job runs it (arm
    `deattenuated_top`, or `calibrated_top` for a job with `top_calibration`): every setting at
    every epsilon, `seeds` noise draws each, scored on the validation split; one setting for all
    epsilons (a job file fixes it before its epsilon is known), the best by mean validation AUC,
    then its test AUC per epsilon on fresh noise."""
    vs = vertical_split(census.load(limit=limit))
    n = len(vs.y_train)
    grid: list[dict[str, Any]] = []
    calibrated = arm == "calibrated_top"
    settings = itertools.product(
        (VERTICAL_BATCH,) if calibrated else VERTICAL_BATCHES,
        (1, 2) if quick else CALIBRATED_ROUNDS if calibrated else VERTICAL_ROUNDS,
        (1.5,) if quick else CALIBRATED_LEARNING_RATES if calibrated else VERTICAL_LEARNING_RATES,
    )
    for batch, rounds, lr in settings:
        rows = batch or n
        by_eps = {
            f"eps{eps:g}": float(
                np.mean(
                    [
                        vertical_arm_replay(vs, arm, epsilon=eps, rounds=rounds, lr=lr, batch=rows, seed=k)[0]
                        for k in range(1 if quick else seeds)
                    ]
                )
            )
            for eps in EPSILONS
        }
        grid.append(
            {
                "batch_size": rows,
                "rounds": rounds,
                "learning_rate": lr,
                "validation_auc": by_eps,
                "mean_validation_auc": float(np.mean(list(by_eps.values()))),
            }
        )
        print(json.dumps(grid[-1]), flush=True)
    best = max(grid, key=lambda g: g["mean_validation_auc"])
    chosen = {}
    for eps in EPSILONS:
        validation, test, _ = vertical_arm_replay(
            vs,
            arm,
            epsilon=eps,
            rounds=best["rounds"],
            lr=best["learning_rate"],
            batch=best["batch_size"],
            seed=seeds + 1,
        )
        chosen[f"eps{eps:g}"] = {
            "batch_size": best["batch_size"],
            "rounds": best["rounds"],
            "learning_rate": best["learning_rate"],
            "validation_auc": validation,
            "test_auc": test,
        }
    return {
        "rows": limit,
        "training_rows": n,
        "clip": VERTICAL_CLIP,
        "embedding_dim": 4,
        "arm": arm,
        "grid": grid,
        "chosen": chosen,
    }


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
            m = pooled_stats.noisy_moments(
                m, len(rows), dp_sgd.noisy_rows(len(rows), rng), dp_sgd.STATS_NOISE_MULTIPLIER, rng
            )
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


def _timed_to(target: Path, quick: bool, compute: Callable[[], dict[str, Any]]) -> None:
    """Run `compute`, add its wall time, write it as JSON to `target` (a -quick twin with --quick)."""
    t0 = time.perf_counter()
    result = compute()
    result["wall_s"] = time.perf_counter() - t0
    if quick:
        target = target.with_name(f"{target.stem}-quick.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1))
    print(f"-> {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30k rows, a 2 x 2 grid")
    ap.add_argument("--limit", type=int, default=100_000, help="rows (seeded subsample; bench.federated's size)")
    ap.add_argument("--standardise", action="store_true", help="only the standardise-under-DP comparison")
    ap.add_argument(
        "--seeds", type=int, default=3, help="with --standardise, --vertical-options: runs per arm, epsilon"
    )
    ap.add_argument(
        "--vertical-options", action="store_true", help="only the vertical record-DP alternatives (VERTICAL_ARMS)"
    )
    ap.add_argument(
        "--vertical", action="store_true", help="only the vertical record-DP sweep, merged into dp_sweep.json"
    )
    ap.add_argument(
        "--vertical-ceiling",
        action="store_true",
        help="only split learning without clipping or noise, by steps, against pooled (dp_vertical_ceiling.json)",
    )
    ap.add_argument(
        "--stacked",
        action="store_true",
        help="only the stacked vertical job's part training, by setting and epsilon (dp_stacked.json)",
    )
    ap.add_argument(
        "--calibrated",
        action="store_true",
        help="with --vertical: sweep for jobs with top_calibration (section vertical_calibrated)",
    )
    args = ap.parse_args()
    if args.vertical:
        t0 = time.perf_counter()
        arm = "calibrated_top" if args.calibrated else "deattenuated_top"
        vertical = vertical_sweep(30_000 if args.quick else args.limit, quick=args.quick, arm=arm)
        vertical["wall_s"] = time.perf_counter() - t0
        if args.quick:
            print(json.dumps(vertical["chosen"], indent=1))
            return
        out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        section = "vertical_calibrated" if args.calibrated else "vertical"
        out[section] = vertical
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1))
        print(json.dumps(vertical["chosen"], indent=1), f"-> {RESULTS} ({section} section)")
        return
    rows, seeds = (30_000, 1) if args.quick else (args.limit, args.seeds)
    if args.vertical_ceiling:
        _timed_to(CEILING_RESULTS, args.quick, lambda: vertical_ceiling(rows, seeds))
        return
    if args.stacked:
        _timed_to(STACKED_RESULTS, args.quick, lambda: stacked_sweep(rows, 1 if args.quick else 2))
        return
    if args.vertical_options:
        # The settings the sweep chose for the job (bench.federated runs them), else its defaults.
        job = json.loads(RESULTS.read_text())["vertical"]["chosen"]["eps4"] if RESULTS.exists() else {}
        rounds, lr = int(job.get("rounds", 2)), float(job.get("learning_rate", 1.5))
        batch = int(job.get("batch_size", VERTICAL_BATCH))
        _timed_to(VERTICAL_OPTIONS_RESULTS, args.quick, lambda: vertical_options(rows, seeds, rounds, lr, batch))
        return
    if args.standardise:
        _timed_to(STANDARDISE_RESULTS, args.quick, lambda: standardise_comparison(rows, seeds))
        return
    limit, clips, rates = (30_000, (0.5, 2.0), (4.0, 8.0)) if args.quick else (args.limit, CLIPS, LEARNING_RATES)
    t0 = time.perf_counter()
    s = split(census.load(limit=limit))
    grid: list[dict[str, Any]] = []
    for eps, clip, lr in itertools.product(EPSILONS, clips, rates):
        w = federated_dp_sgd(s, epsilon=eps, clip=clip, lr=lr)
        grid.append({"epsilon": eps, "clip": clip, "learning_rate": lr, "validation_auc": _auc(w, s.validation)})
        print(json.dumps(grid[-1]), flush=True)
    vertical = vertical_sweep(limit, quick=args.quick)
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
        "vertical": vertical,
        "wall_s": time.perf_counter() - t0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(json.dumps(chosen, indent=1), f"-> {RESULTS}")


if __name__ == "__main__":
    main()
