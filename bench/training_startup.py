"""What a training job pays for Flower's processes: per job against a long-lived link, the
SuperNode's fixed idle poll against xgate's shorter one, and a fresh ClientApp process per message
against warm ones.

The same small horizontal job (two regional nodes, synthetic rows, one round), run `--jobs` times
each way in one run, interleaved, three ways:

* `per_job`: a federation started for the job (SuperLink, two SuperNodes, their registration:
  `run_job` without `local`, what the CLI's local path does);
* `long_lived`: the coordinator's long-lived `LocalTraining` link (what the gateway in local mode
  does, started once before the first job);
* `long_lived_stock_poll`: the same, with Flower's own `flower-supernode` (a fixed 3 s sleep after
  every pull that finds no message, and a fresh `flwr-clientapp` process per message) instead of
  `federated.supernode_process` (0.25 s, warm ClientApps);
* `long_lived_cold_clientapps`: xgate's short poll, but a fresh `flwr-clientapp` process per message
  as Flower starts them (`XGATE_WARM_CLIENTAPPS=0`), so the warm ClientApps' share shows alone.

Per job: seconds from submission to the Flower run's start (by the job's own events) and the job's
wall time; each link's own start-up, paid once; and each link's idle cost, the CPU its processes
(SuperLink, SuperNodes and their SuperExecs) use while no job runs. Writes
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

from federated import datasets, deployment
from federated.admission import LedgerAdmission
from federated.events import read_events
from federated.jobs import parse_job
from federated.local_link import LocalTraining
from federated.runner import NodeSpec, run_job
from federated.supernode_process import POLL_S, WARM_ENV

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


def _stock_supernode() -> list[str]:
    return [str(deployment.BIN / "flower-supernode")]


def idle_cost(link: LocalTraining, seconds: float) -> tuple[float, float]:
    """CPU (in cores) the link's processes and their children use over `seconds` with no job, and
    their resident memory (MB) at the end."""
    groups = {p.popen.pid for p in link.link().fed.procs.values()}  # each started in its own session

    def members() -> list[list[str]]:
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in groups:  # pgrp
                out.append(fields)
        return out

    def cpu_s() -> float:
        return sum(int(f[11]) + int(f[12]) for f in members()) / os.sysconf("SC_CLK_TCK")  # utime + stime

    before = cpu_s()
    time.sleep(seconds)
    cores = (cpu_s() - before) / seconds
    rss_mb = sum(int(f[21]) for f in members()) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return cores, rss_mb


def run(jobs: int, rows: int, idle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xgate-startup-") as tmp:
        root = Path(tmp)
        nodes = regional_nodes(root / "nodes", rows)
        short = LocalTraining(state_dir=root / "flower-local", nodes=nodes)
        stock = LocalTraining(state_dir=root / "flower-local-stock", nodes=nodes)
        cold = LocalTraining(state_dir=root / "flower-local-cold", nodes=nodes)
        try:
            links = {"long_lived": short.link()}
            default_supernode = deployment.SUPERNODE
            deployment.SUPERNODE = _stock_supernode()  # only while this link starts its SuperNodes
            try:
                links["long_lived_stock_poll"] = stock.link()
            finally:
                deployment.SUPERNODE = default_supernode
            os.environ[WARM_ENV] = "0"  # only while this link starts its SuperNodes
            try:
                links["long_lived_cold_clientapps"] = cold.link()
            finally:
                del os.environ[WARM_ENV]
            idle: dict[str, float] = {}
            idle_rss: dict[str, float] = {}
            for label, lt in (
                ("long_lived", short),
                ("long_lived_stock_poll", stock),
                ("long_lived_cold_clientapps", cold),
            ):
                cores, rss = idle_cost(lt, idle_s)
                idle[label], idle_rss[label] = round(cores, 3), round(rss)
            arms = {
                "per_job": None,
                "long_lived": short,
                "long_lived_stock_poll": stock,
                "long_lived_cold_clientapps": cold,
            }
            rows_out: dict[str, list[dict[str, float]]] = {label: [] for label in arms}
            for i in range(jobs):  # interleaved, so every arm sees the same machine
                for label, lt in arms.items():
                    job_dir = root / "jobs" / f"{label}-{i}"
                    t0 = time.perf_counter()
                    extra = {"local": lt.link()} if lt is not None else {}
                    run_job(job(f"{label}-{i}"), nodes, job_dir=job_dir, **extra)
                    wall = time.perf_counter() - t0
                    rows_out[label].append({"to_run_s": round(seconds_to_run(job_dir), 2), "wall_s": round(wall, 2)})
                    print(f"{label:>26} job {i}: {rows_out[label][-1]}", flush=True)
            startup = {label: round(link.startup_s, 2) for label, link in links.items()}
        finally:
            for lt in (short, stock, cold):
                lt.close()
    med = {
        label: {k: round(statistics.median(r[k] for r in runs), 2) for k in ("to_run_s", "wall_s")}
        for label, runs in rows_out.items()
    }
    return {
        "benchmark": "training_startup",
        "setup": f"horizontal job, 2 regional nodes x {rows} synthetic rows, 1 round, no DP; {jobs} jobs each way, "
        f"interleaved; TLS and SuperNode authentication in all; idle CPU over {idle_s:g} s per link",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "supernode_poll_s": {"long_lived": POLL_S, "long_lived_stock_poll": 3.0, "long_lived_cold_clientapps": POLL_S},
        "jobs": rows_out,
        "median": med,
        "link_startup_s": startup["long_lived"],
        "link_startup_s_by_link": startup,
        "idle_cores_by_link": idle,
        "idle_rss_mb_by_link": idle_rss,
        "to_run_ratio_per_job_vs_long_lived": round(med["per_job"]["to_run_s"] / med["long_lived"]["to_run_s"], 1),
        "wall_ratio_per_job_vs_long_lived": round(med["per_job"]["wall_s"] / med["long_lived"]["wall_s"], 2),
        "wall_ratio_stock_poll_vs_short_poll": round(
            med["long_lived_stock_poll"]["wall_s"] / med["long_lived"]["wall_s"], 2
        ),
        "wall_ratio_cold_vs_warm_clientapps": round(
            med["long_lived_cold_clientapps"]["wall_s"] / med["long_lived"]["wall_s"], 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one job each way")
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--idle-s", type=float, default=20.0, help="how long each link is watched idle")
    args = parser.parse_args()
    result = run(1 if args.quick else args.jobs, args.rows, 5.0 if args.quick else args.idle_s)
    out = RESULTS.with_name("training_startup-quick.json") if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median"]), f"link start-up {result['link_startup_s']} s", result["idle_cores_by_link"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
