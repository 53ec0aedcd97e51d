"""What a training job pays before its first round: Flower processes per job against a long-lived link.

The same small horizontal job (two regional nodes, synthetic rows, one round), run `--jobs` times
each way in one run, interleaved: on a federation started for the job (SuperLink, two SuperNodes,
their registration: `run_job` without `local`, what the CLI's local path does) and on the
coordinator's long-lived `LocalTraining` link (what the gateway in local mode does, started once
before the first job). Per job: seconds from submission to the Flower run's start (by the job's
own events) and the job's wall time; the link's own start-up, paid once. Writes
bench/results/training_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from federated import datasets
from federated.admission import LedgerAdmission
from federated.events import read_events
from federated.jobs import parse_job
from federated.local_link import LocalTraining
from federated.runner import NodeSpec, run_job

RESULTS = Path(__file__).parent / "results" / "training_startup.json"
PURPOSE = "fraud_detection"
# synthetic_population's columns, held by a 'medical' agency split by region (horizontal)
RENAME = {
    "civil.age": "medical.age",
    "tax.income": "medical.claims_total",
    "hrss.months": "medical.insured_months",
    "civil.disabled": "medical.disabled",
    "health.visits": "medical.visits",
    "tax.label": "medical.fraud_flag",
}


def regional_nodes(root: Path, rows: int) -> list[NodeSpec]:
    subjects, cols, _ = datasets.synthetic_population(2 * rows, seed=5)
    nodes = []
    for k in range(2):
        part = slice(k * rows, (k + 1) * rows)
        store = root / f"region{k}" / "store.sqlite"
        name = f"claims_region{k}"
        datasets.write_store(
            store,
            name,
            subjects[part],
            {RENAME[e]: datasets.Column(c.values[part], c.type, c.min, c.max) for e, c in cols.items() if e in RENAME},
        )
        node = NodeSpec(f"region{k}", store, root / f"region{k}" / "ledger.sqlite")
        LedgerAdmission(node.ledger, node.store).configure([PURPOSE], {name: 1000.0})
        nodes.append(node)
    return nodes


def job(job_id: str) -> Any:
    return parse_job(
        {
            "job_id": job_id,
            "purpose": PURPOSE,
            "mode": "horizontal",
            "features": [v for k, v in RENAME.items() if k != "tax.label"],
            "label": "medical.fraud_flag",
            "label_holder": "medical",
            "rounds": 1,
            "min_nodes": 2,
            "batch_size": 64,
            "round_timeout_s": 120,
            "job_timeout_s": 600,
        }
    )


def seconds_to_run(job_dir: Path) -> float:
    """From the job's submission to its Flower run's start, by the job's own event file."""
    at: dict[str, datetime] = {}
    for event in read_events(job_dir / "events.jsonl")[0]:
        at.setdefault(event["event"], datetime.fromisoformat(event["ts"]))
    return (at["run_started"] - at["job_submitted"]).total_seconds()


def run(jobs: int, rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xgate-startup-") as tmp:
        root = Path(tmp)
        nodes = regional_nodes(root / "nodes", rows)
        local = LocalTraining(state_dir=root / "flower-local", nodes=nodes)
        try:
            link = local.link()
            rows_out: dict[str, list[dict[str, float]]] = {"per_job": [], "long_lived": []}
            for i in range(jobs):  # interleaved, so both see the same machine
                for label in ("per_job", "long_lived"):
                    job_dir = root / "jobs" / f"{label}-{i}"
                    t0 = time.perf_counter()
                    extra = {"local": local.link()} if label == "long_lived" else {}
                    run_job(job(f"{label}-{i}"), nodes, job_dir=job_dir, **extra)
                    wall = time.perf_counter() - t0
                    rows_out[label].append({"to_run_s": round(seconds_to_run(job_dir), 2), "wall_s": round(wall, 2)})
                    print(f"{label:>10} job {i}: {rows_out[label][-1]}", flush=True)
            startup = link.startup_s
        finally:
            local.close()
    med = {
        label: {k: round(statistics.median(r[k] for r in runs), 2) for k in ("to_run_s", "wall_s")}
        for label, runs in rows_out.items()
    }
    return {
        "benchmark": "training_startup",
        "setup": f"horizontal job, 2 regional nodes x {rows} synthetic rows, 1 round, no DP; {jobs} jobs each way, "
        "interleaved; TLS and SuperNode authentication in both",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "jobs": rows_out,
        "median": med,
        "link_startup_s": round(startup, 2),
        "to_run_ratio_per_job_vs_long_lived": round(med["per_job"]["to_run_s"] / med["long_lived"]["to_run_s"], 1),
        "wall_ratio_per_job_vs_long_lived": round(med["per_job"]["wall_s"] / med["long_lived"]["wall_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one job each way")
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    result = run(1 if args.quick else args.jobs, args.rows)
    out = RESULTS.with_name("training_startup-quick.json") if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"]), f"link start-up {result['link_startup_s']} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
