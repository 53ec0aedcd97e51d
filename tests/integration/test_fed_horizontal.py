"""End to end over real flower-superlink/flower-supernode processes on loopback: horizontal
FedAvg with SecAgg+, and proof that the secure aggregate equals the plain weighted mean; two
features standardised with statistics pooled by their own SecAgg+ round, equal to one table's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated import datasets, model, node, updates
from federated.admission import LedgerAdmission
from federated.jobs import parse_job
from federated.runner import Federation, NodeSpec, run_job
from xgate.logging import FORBIDDEN_KEYS

# Minutes of Flower processes; on a loaded 2-core CI box a job has taken over 300 s (the default).
pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=200), pytest.mark.timeout(900)]
FEATS = ["civil.age", "tax.income", "hrss.months", "civil.disabled", "civil.region", "health.visits"]


def make_nodes(root: Path, sizes: list[int], seed: int = 1) -> list[NodeSpec]:
    subj, cols, _ = datasets.synthetic_population(sum(sizes), seed=seed)
    nodes, start = [], 0
    for k, size in enumerate(sizes):
        idx = slice(start, start + size)
        start += size
        store = root / f"region{k}" / "store.sqlite"
        datasets.write_store(
            store,
            f"synth_r{k}",
            subj[idx],
            {e: datasets.Column(c.values[idx], c.type, c.min, c.max) for e, c in cols.items()},
        )
        spec = NodeSpec(f"region{k}", store, root / f"region{k}" / "ledger.sqlite")
        LedgerAdmission(spec.ledger, spec.store).configure(["fraud-model"], {f"synth_r{k}": 10.0})
        nodes.append(spec)
    return nodes


def assert_no_orphans(fed: Federation) -> None:
    assert all(proc.popen.poll() is not None for proc in fed.procs.values())
    assert fed.leftover_processes() == []


def test_secagg_horizontal_end_to_end(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, [300, 400, 500])
    job = parse_job(
        {
            "job_id": "it-secagg",
            "purpose": "fraud-model",
            "mode": "horizontal",
            "features": FEATS,
            "label": "tax.label",
            "label_holder": "tax",
            "rounds": 1,
            "secagg": True,
            "min_nodes": 2,
            "batch_size": 64,
            "encodings": {"civil.age": "standardise", "tax.income": "standardise"},
            "round_timeout_s": 120,
            "job_timeout_s": 400,
        }
    )
    events: list[dict[str, Any]] = []
    feds: list[Federation] = []
    res = run_job(job, nodes, job_dir=tmp_path / "job", on_event=events.append, on_started=feds.append)
    assert res.status == "completed" and res.bytes_exchanged > 0
    assert_no_orphans(feds[0])

    # Each node shared its SecAgg+ secrets only with keys the other agencies signed (secagg_keys).
    for n in nodes:
        (evidence,) = (n.ledger.parent / "fl-cache" / job.job_id).glob("run-*/secagg.jsonl")
        shared = [json.loads(line) for line in evidence.read_text().splitlines() if "neighbours" in line]
        assert len(shared) == 2  # the statistics round and the training round
        others = sorted(m.agency for m in nodes if m is not n)
        assert all(e["authenticated"] and sorted(e["neighbour_agencies"]) == others for e in shared)
        # ... and unmasked only lists every agency signed (the consistency round, secagg_keys)
        unmasked = [json.loads(line) for line in evidence.read_text().splitlines() if '"unmask"' in line]
        everyone = sorted(m.agency for m in nodes)
        assert len(unmasked) == 2 and all(e["consistent"] and e["consistency_signers"] == everyone for e in unmasked)

    # The statistics round: its own SecAgg+ round opened only the pooled moments, and the means and
    # spreads it gave equal those of one table of every node's training rows.
    configs = [node.NodeConfig(n.store, n.agency, n.ledger, None) for n in nodes]
    rows = [node.labelled_rows(job, nc) for nc in configs]
    whole = model.fit_stats(rows[0].infos, rows[0].encodings, np.vstack([r.raw[~r.test] for r in rows]))
    meta = json.loads((tmp_path / "job" / "model.json").read_text())
    pooled = {k: (v["mean"], v["sd"]) for k, v in meta["standardisation"].items()}
    assert pooled.keys() == whole.keys() == {"civil.age", "tax.income"}
    for feature, (mean, sd) in whole.items():
        assert pooled[feature][0] == pytest.approx(mean, rel=1e-4) and pooled[feature][1] == pytest.approx(sd, rel=1e-3)
    (stats_round,) = [e for e in events if e["event"] == "secagg_round" and e["phase"] == "statistics"]
    assert stats_round["unmasked"] and stats_round["sampled"] == stats_round["masked_vectors"] == 3
    (pooled_event,) = [e for e in events if e["event"] == "statistics_pooled"]
    assert pooled_event["secure_aggregation"] and pooled_event["features"] == ["civil.age", "tax.income"]
    assert len(pooled_event["participants"]) == 3

    # The SecAgg+ aggregate equals the plain weighted mean of the nodes' (xgate-prepared) updates.
    max_weight = 500
    prepared = []
    for nc in configs:
        data = node.horizontal_data(job, nc, pooled)
        w0 = model.lr_init(data.x_train.shape[1])
        w1 = model.lr_train(
            w0,
            data.x_train,
            data.y_train,
            epochs=job.local_epochs,
            lr=job.learning_rate,
            batch=job.batch_size,
            l2=job.l2,
            seed=job.seed + 1,
        )
        prepared.append(
            updates.prepare_update(
                [w1 - w0], [w0.shape], len(data.y_train), bound=job.update_bound, max_weight=max_weight
            )
        )
    plain = updates.weighted_mean([(p.arrays, p.weight) for p in prepared])[0]
    with np.load(tmp_path / "job" / "aggregate-round001.npz") as agg:
        secure = agg["arr_0"]
    assert np.max(np.abs(plain)) > 1e-3  # a real update, not zeros
    assert np.max(np.abs(secure - plain)) <= updates.quantisation_error_bound(job.update_bound, 3)

    kinds = [e["event"] for e in events]
    for expected in (
        "job_submitted",
        "job_approved",
        "run_started",
        "round_completed",
        "round_evaluated",
        "job_completed",
    ):
        assert expected in kinds
    done = next(e for e in events if e["event"] == "round_completed")
    assert sorted(done["agencies"]) == ["region0", "region1", "region2"] and len(done["aggregate_sha256"]) == 64
    # Audit events carry no personal data or values.
    for e in events:
        assert not FORBIDDEN_KEYS & set(e)
    assert meta["model_sha256"] == res.model_sha256 and set(meta["data_digests"]) == {"region0", "region1", "region2"}
    report = json.loads((tmp_path / "job" / "report.json").read_text())
    assert 0.0 <= report["evaluation"]["auc"] <= 1.0 and "confusion_matrix" in report["evaluation"]
    assert (tmp_path / "job" / "curve.png").stat().st_size > 1000
    # The nodes' ledgers recorded the approval the ClientApps checked.
    assert LedgerAdmission(nodes[0].ledger, nodes[0].store)(job, "region0").approved
