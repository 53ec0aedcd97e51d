"""The plain vertical job of `bench.federated --record-dp --limit 100000`, alone: for an A/B of two
checkouts on one machine, back to back (its wall time in the full run varies with load).

    git worktree add /tmp/base <commit>
    (cd /tmp/base && PYTHONPATH=$PWD /work/main/.venv/bin/python -m bench.ab_vertical base)
    (cd /work/main && PYTHONPATH=$PWD .venv/bin/python -m bench.ab_vertical head [--link] [--limit N] [--rounds R])

Each from its own checkout, with PYTHONPATH naming it: `python -m` puts the working directory first
on the path, ahead of PYTHONPATH, and the Flower processes the job starts find the code by
PYTHONPATH; from one directory the bench and the ClientApps would run different checkouts.

`--link` runs the job on a long-lived local link (the gateway's local mode), started before the
job and not counted in its wall time; without it the job starts its own Flower processes, as every
earlier checkout's bench did. Prints one line `AB <label> {json}` with wall, alignment and training
seconds, AUC and bytes (and the link's start-up, with `--link`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench import federated as bench_federated
from federated import census


def main() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    ap = argparse.ArgumentParser()
    ap.add_argument("label", nargs="?", default="run")
    ap.add_argument("--link", action="store_true", help="run on a long-lived local link")
    ap.add_argument("--limit", type=int, default=100_000, help="seeded subsample of N rows (0: all)")
    ap.add_argument("--rounds", type=int, default=bench_federated.VERTICAL_ROUNDS)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="xgate-ab-"))
    data = census.load(limit=args.limit or None)
    nodes = census.vertical_nodes(data, root / "vertical")
    bench_federated._admit(nodes, cap=20.0)
    job = {
        "job_id": "bench-vertical", "mode": "vertical", "rounds": args.rounds, "min_nodes": 6,
        "learning_rate": 3.0, "round_timeout_s": 900, "job_timeout_s": 3600,
    }  # fmt: skip
    keys = ("wall_s", "to_aligned_s", "training_s", "auc", "bytes")
    extra: dict[str, float] = {}
    if args.link:
        with bench_federated._long_lived(nodes, root / "link") as link:
            res = bench_federated._fed(job, nodes, root, link)
        extra["link_startup_s"] = round(link.startup_s, 2)
    else:
        res = bench_federated._fed(job, nodes, root)
    out = {k: res[k] for k in keys} | extra
    print("AB", args.label, json.dumps(out | {"rows": len(data.subjects)}), flush=True)


if __name__ == "__main__":
    main()
