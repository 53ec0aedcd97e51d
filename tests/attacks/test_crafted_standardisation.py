"""Attack: the coordinator of a horizontal record-DP job crafts what it sends so that one person's
row overflows, and reads that person's membership from whether the node's fit fails.

1. Standardisation statistics with sd = 5e-303: a row above ~900,000 encodes as +-inf, DP-SGD turned
   inf x 0 into NaN and the node failed exactly when that row was sampled (20/20 runs with the victim,
   0/20 without, whatever epsilon). The node now accepts only statistics an honest pooling gives
   (mean within the declared range, sd at least 1 % of it under record DP) and refuses the rest
   before it reads a row: the same refusal in both worlds.
2. Finite weights chosen so that x @ w is inf - inf = NaN for the victim's row alone (two
   standardised features, honest statistics). DP-SGD now gives any non-finite per-example gradient
   zero weight before clipping: the node answers in both worlds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federated import datasets, model, pooled_stats
from federated.admission import LedgerAdmission
from federated.horizontal_client import HorizontalClient
from federated.jobs import JobSpec, parse_job
from federated.node import NodeConfig
from xgate.errors import XgateError

N = 60  # every row is in every step (q = 1): a data-dependent failure shows at once


def _node(tmp: Path, victim: bool, features: dict[str, str]) -> tuple[JobSpec, NodeConfig]:
    rng = np.random.default_rng(5)
    age = rng.integers(18, 95, N)
    income = np.round(rng.lognormal(10.0, 0.8, N)).clip(0, 500_000)  # nobody else is rich
    subjects = [f"p{i}" for i in range(N)]
    if victim:
        age, income, subjects = np.append(age, 88), np.append(income, 1_900_000), [*subjects, "victim"]
    tmp.mkdir(parents=True)
    store, ledger = tmp / "store.sqlite", tmp / "ledger.sqlite"
    datasets.write_store(
        store,
        "synth",
        subjects,
        {
            "civil.age": datasets.Column(age, "int", 0, 120),
            "tax.income": datasets.Column(income, "int", 0, 2_000_000),
            "tax.label": datasets.Column((income > 30_000).astype(int), "flag", 0, 1),
        },
    )
    holdout = tmp / "holdout.txt"
    holdout.write_text("\n".join(subjects[:15]) + "\n")  # the victim trains
    job = parse_job(
        {
            "job_id": "crafted-stats",
            "purpose": "fraud-model",
            "mode": "horizontal",
            "features": list(features),
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 3,
            "secagg": False,
            "min_nodes": 1,
            "encodings": features,
            "dp": {"epsilon": 1.0, "delta": 1e-6, "clip": 1.0, "unit": "record"},
        }
    )
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"synth": 10_000.0})
    assert admission(job, "r0").approved
    return job, NodeConfig(store, "r0", ledger, holdout)


def _fit(job: JobSpec, nc: NodeConfig, run: str, weights: np.ndarray, stats: str) -> str:
    """One run's first fit round: 'ok' or the node's refusal."""
    client = HorizontalClient(job, nc, 1_000_000, ledger_check=True, run_id=run)
    try:
        arrays, weight, _ = client.fit([weights], {"server_round": 1, pooled_stats.CONFIG_KEY: stats})
    except XgateError as exc:
        return exc.message
    assert np.all(np.isfinite(arrays[0])) and weight >= 1
    return "ok"


INCOME = {"tax.income": "standardise"}


@pytest.mark.parametrize(
    ("mean", "sd", "why"),
    [
        (0.0, 5e-303, "sd for 'tax.income' is below"),  # the reviewer's: the victim's row becomes inf
        (40_000.0, 19_999.0, "sd for 'tax.income' is below"),  # just under 1 % of the declared range
        (-1e308, 60_000.0, "mean for 'tax.income' lies outside its declared range"),
        (2_000_001.0, 60_000.0, "mean for 'tax.income' lies outside its declared range"),
    ],
)
def test_crafted_statistics_are_refused_the_same_whatever_the_data(
    tmp_path: Path, mean: float, sd: float, why: str
) -> None:
    crafted = pooled_stats.stats_to_config({"tax.income": (mean, sd)})
    answers = {}
    for world in (False, True):
        job, nc = _node(tmp_path / str(world), world, INCOME)
        answers[world] = {_fit(job, nc, str(run), np.zeros(2), crafted) for run in (1, 2)}
    assert answers[False] == answers[True]  # membership does not show
    (refusal,) = answers[True]
    assert why in refusal and "1900000" not in refusal.replace(",", "")  # names the feature, not its data


def test_statistics_at_the_edge_of_what_is_accepted_train_in_both_worlds(tmp_path: Path) -> None:
    """Mean at the declared maximum, sd at the floor: every encoded value within +-100, both worlds train."""
    edge = pooled_stats.stats_to_config({"tax.income": (2_000_000.0, 20_000.0)})
    for world in (False, True):
        job, nc = _node(tmp_path / str(world), world, INCOME)
        assert _fit(job, nc, "1", np.zeros(2), edge) == "ok"


MEANS = {"civil.age": (50.0, 15.0), "tax.income": (40_000.0, 60_000.0)}  # plausible pooled statistics
BOTH = {"civil.age": "standardise", "tax.income": "standardise"}


def _crafted_weights() -> np.ndarray:
    """Finite weights: the age term overflows to +inf above 85, the income term to -inf above 1M."""
    big = np.finfo(np.float64).max
    z_age, z_income = (85 - 50.0) / 15.0, (1_000_000 - 40_000.0) / 60_000.0
    return np.array([big / z_age, -big / z_income, 0.0])


def test_positive_control_the_crafted_statistics_overflow_the_victims_row_alone() -> None:
    """The attack is live: encoded with the sd the node now refuses, the victim's income (1.9M) is
    infinite and every other row's (at most 500,000) finite, so a node that accepted them would fail
    (or not) with the victim's presence."""
    info = datasets.ElementInfo("tax.income", "int", 0, 2_000_000)
    rng = np.random.default_rng(5)
    raw = np.r_[np.round(rng.lognormal(10.0, 0.8, N)).clip(0, 500_000), 1_900_000.0][:, None]
    encs = model.resolve([info], parse_job({**_JOB_FOR_ENCODINGS, "encodings": INCOME}).encodings)
    with np.errstate(all="ignore"):
        x = model.encode([info], raw, encs, {"tax.income": (0.0, 5e-303)})
    assert np.isinf(x[-1, 0]) and np.isfinite(x[:-1]).all()


_JOB_FOR_ENCODINGS = {
    "job_id": "enc-only",
    "purpose": "fraud-model",
    "mode": "horizontal",
    "features": ["tax.income"],
    "label": "tax.label",
    "label_holder": "tax",
    "rounds": 1,
    "secagg": False,
    "min_nodes": 1,
}


def test_crafted_weights_do_not_fail_the_node_when_the_victim_is_sampled(tmp_path: Path) -> None:
    stats = pooled_stats.stats_to_config(MEANS)
    for world in (False, True):
        job, nc = _node(tmp_path / str(world), world, BOTH)
        assert [_fit(job, nc, str(run), _crafted_weights(), stats) for run in (1, 2)] == ["ok", "ok"], world


def _node_dp_node(tmp: Path, victim: bool) -> tuple[JobSpec, NodeConfig]:
    """Four min-max features declared 0..100; only the victim has all four at 100 (review 2026-12-06)."""
    rng = np.random.default_rng(7)
    cols = {f"fx.x{k}": rng.integers(0, 100, 300) for k in range(4)}
    subjects = [f"p{i}" for i in range(300)]
    if victim:
        cols = {k: np.append(v, 100) for k, v in cols.items()}
        subjects.append("victim")
    tmp.mkdir(parents=True)
    store, ledger = tmp / "store.sqlite", tmp / "ledger.sqlite"
    data = {k: datasets.Column(v, "int", 0, 100) for k, v in cols.items()}
    data["fx.label"] = datasets.Column(rng.integers(0, 2, len(subjects)), "flag", 0, 1)
    datasets.write_store(store, "synth", subjects, data)
    job = parse_job(
        {
            "job_id": "crafted-weights-node-dp",
            "purpose": "fraud-model",
            "mode": "horizontal",
            "features": list(cols),
            "label": "fx.label",
            "label_holder": "fx",
            "rounds": 3,
            "secagg": False,
            "min_nodes": 1,
            "encodings": dict.fromkeys(cols, "minmax"),
            "dp": {"epsilon": 1.0, "delta": 1e-6, "clip": 1.0, "unit": "node"},
        }
    )
    admission = LedgerAdmission(ledger, store)
    admission.configure(["fraud-model"], {"synth": 10_000.0})
    assert admission(job, "r0").approved
    return job, NodeConfig(store, "r0", ledger, None)


def test_node_level_dp_answers_alike_when_crafted_finite_weights_overflow_for_the_victim_alone(tmp_path: Path):
    """Weights of +-DBL_MAX/1.995 on four features: x @ w is inf - inf = NaN only for a row with all
    four at their maximum. Before, the node-level DP node's fit failed exactly when that row was in
    its data (5/5 against 0/5); it now sends its noise without a step in both worlds."""
    big = np.finfo(np.float64).max / 1.995
    weights = np.array([big, -big, big, -big, 0.0])
    for victim in (False, True):
        job, nc = _node_dp_node(tmp_path / str(victim), victim)
        for run in ("1", "2"):
            with np.errstate(all="ignore"):
                assert _fit(job, nc, run, weights, "{}") == "ok"
