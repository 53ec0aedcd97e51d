"""Node-level DP that does not rest on the coordinator adding the noise.

Node-level DP (`dp.unit = "node"`, the default) used to be central: the nodes clipped their
updates and the coordinator added the Gaussian noise to the mean (Flower's
DifferentialPrivacyClientSideFixedClipping). A coordinator that skipped it, or simply looked at
the SecAgg+ sum before adding it, read the exact mean: it told apart a round in which the victim
node contributed its update from one in which it contributed nothing every time (positive control
below). Each node now clips its update to the job's clip and adds its share of the noise itself
(`HorizontalClient.node_dp_release`, sd z·C/√m under SecAgg+), so the sum the coordinator opens
carries sd ≥ z·C whatever it does. The attack, with the coordinator knowing every noise-free
update, succeeds no better than the Gaussian mechanism with multiplier z allows: Φ(1/(2z)) for
one round, within the job's e^ε/(1+e^ε) + δ. Also: the coordinator's config cannot loosen the
clip, and every node weighs the same (a large node would otherwise move the mean by more than
clip/k, more than the noise was calibrated for).
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from federated import datasets, dp
from federated.admission import LedgerAdmission
from federated.horizontal_client import HorizontalClient
from federated.jobs import JobSpec, parse_job
from federated.node import NodeConfig

EPSILON, DELTA, CLIP = 1.0, 1e-5, 1.0


def _node(tmp_path: Path, name: str, n: int, seed: int, **job_fields: object) -> tuple[JobSpec, NodeConfig]:
    store, ledger = tmp_path / f"{name}.sqlite", tmp_path / f"{name}-ledger.sqlite"
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    cols = {
        "civil.age": datasets.Column(age, "int", 0, 120),
        "tax.label": datasets.Column((age + rng.normal(0, 15, n) > 55).astype(int), "flag", 0, 1),
    }
    datasets.write_store(store, f"synth_{name}", [f"{name}{i}" for i in range(n)], cols)
    body: dict[str, object] = {
        "job_id": "h-node-dp", "purpose": "fraud-model", "mode": "horizontal", "features": ["civil.age"],
        "label": "tax.label", "label_holder": "tax", "rounds": 1, "secagg": True, "min_nodes": 2,
        "learning_rate": 4.0, "dp": {"epsilon": EPSILON, "delta": DELTA, "clip": CLIP}, **job_fields,
    }  # fmt: skip
    job = parse_job(body)
    LedgerAdmission(ledger, store).configure(["fraud-model"], {f"synth_{name}": 100.0})
    assert LedgerAdmission(ledger, store)(job, name).approved
    return job, NodeConfig(store, name, ledger, None, None)


def _clipped_update(client: HorizontalClient) -> list[np.ndarray]:
    """The node's noise-free update for round 1 from zero weights, clipped as the node clips it."""
    from federated import model, updates

    data = client.data({})
    w0 = np.zeros(data.x_train.shape[1] + 1)
    job = client.job
    w1 = model.lr_train(w0, data.x_train, data.y_train, epochs=job.local_epochs, lr=job.learning_rate,
                        batch=job.batch_size, l2=job.l2, seed=job.seed + 1)  # fmt: skip
    return updates.l2_clip([w1 - w0], CLIP)[0]


def test_a_node_sends_its_update_with_its_noise_share_and_an_equal_weight(tmp_path: Path) -> None:
    """Through the real fit handler, each run a fresh client: spread = z·C/√m per coordinate."""
    job, nc = _node(tmp_path, "a", 300, 1)
    z = dp.noise_for_epsilon(EPSILON, job.rounds, DELTA)
    sd = dp.node_noise_sd(z, CLIP, job.min_nodes, secagg=True)
    assert sd == pytest.approx(z * CLIP / math.sqrt(2))
    sent, weights = [], set()
    for run in range(60):  # the coordinator's config names a clip 100 times larger: ignored
        client = HorizontalClient(job, nc, 5_000, ledger_check=True, run_id=str(run))
        arrays, weight, _ = client.fit([np.zeros(2)], {"server_round": 1, "clipping_norm": 100.0})
        sent.append(np.asarray(arrays[0]))
        weights.add(weight)
    assert weights == {5_000}  # max_weight: every node the same, whatever its rows (300 here)
    # every run after the approval's first is charged again: 1 (admission) + 59 further runs
    assert LedgerAdmission(nc.ledger, nc.store).spent("synth_a") == pytest.approx(60.0)
    clean = _clipped_update(HorizontalClient(job, nc, 5_000, ledger_check=True, run_id="clean"))[0]
    noise = np.array(sent) - clean
    # update_bound (1.0) clips each noisy coordinate before SecAgg+ (post-processing): compare the
    # coordinates' spread against the clipped normal's
    clipped_normal = np.clip(np.random.default_rng(0).normal(0, sd, 200_000), -1 - clean.max(), 1 + clean.max())
    assert np.std(noise) == pytest.approx(np.std(clipped_normal), rel=0.25)
    assert np.std(noise) > 0.5


@pytest.mark.parametrize("noise_at_the_nodes", [True, False])
def test_a_coordinator_adding_no_noise_tells_a_round_with_the_victim_from_one_without(
    tmp_path: Path, noise_at_the_nodes: bool
) -> None:
    """Two nodes under SecAgg+; the coordinator opens the sum and adds nothing. World 1: the victim
    sends its update; world 0: it sends nothing (its data removed), its noise share still added.
    The coordinator knows both noise-free sums and decides by projecting onto their difference."""
    victim_job, victim_nc = _node(tmp_path, "v", 300, 2)
    other_job, other_nc = _node(tmp_path, "o", 500, 3)
    victim = HorizontalClient(victim_job, victim_nc, 5_000, ledger_check=True, run_id="sim")
    other = HorizontalClient(other_job, other_nc, 5_000, ledger_check=True, run_id="sim")
    victim_update, other_update = _clipped_update(victim), _clipped_update(other)
    zero = [np.zeros_like(a) for a in victim_update]
    means = [other_update[0] + zero[0], other_update[0] + victim_update[0]]
    direction = means[1] - means[0]
    threshold = float(direction @ (means[0] + means[1]) / 2)

    def opened(world: int) -> np.ndarray:
        mine = victim_update if world else zero
        if noise_at_the_nodes:
            mine = victim.node_dp_release(mine)[0]
            theirs = other.node_dp_release(other_update)[0]
            return np.asarray(mine[0] + theirs[0])
        return np.asarray(mine[0] + other_update[0])  # as before: noise was the coordinator's to add

    trials, right = 3000, 0
    for world in (0, 1):
        for _ in range(trials):
            right += int(float(direction @ opened(world)) > threshold) == world
    rate = right / (2 * trials)
    if not noise_at_the_nodes:
        assert rate == 1.0  # positive control: the exact sum gives the victim away
        return
    z = dp.noise_for_epsilon(EPSILON, victim_job.rounds, DELTA)
    se = math.sqrt(0.25 / (2 * trials))
    gaussian = NormalDist().cdf(float(np.linalg.norm(direction)) / (2 * z * CLIP))  # sum noise sd = z·C
    assert rate <= gaussian + 3 * se, (rate, gaussian)
    assert rate <= math.exp(EPSILON) / (1 + math.exp(EPSILON)) + DELTA
    assert float(np.linalg.norm(direction)) <= CLIP + 1e-9  # the victim moves the sum by at most the clip
