"""The plain vertical job of `bench.federated --record-dp --limit 100000`, alone, once: for an A/B
of two checkouts on one machine, back to back (its wall time in the full run varies with load).

    git worktree add /tmp/base <commit>
    PYTHONPATH=/tmp/base .venv/bin/python -m bench.ab_vertical base
    PYTHONPATH=$PWD      .venv/bin/python -m bench.ab_vertical head

Prints one line `AB <label> {json}` with wall, alignment and training seconds, AUC and bytes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from bench import federated as bench_federated
from federated import census


def main() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    label = sys.argv[1] if len(sys.argv) > 1 else "run"
    root = Path(tempfile.mkdtemp(prefix="xgate-ab-"))
    data = census.load(limit=100_000)
    nodes = census.vertical_nodes(data, root / "vertical")
    bench_federated._admit(nodes, cap=20.0)
    job = {
        "job_id": "bench-vertical", "mode": "vertical", "rounds": 6, "min_nodes": 6, "learning_rate": 3.0,
        "round_timeout_s": 900, "job_timeout_s": 3600,
    }  # fmt: skip
    res = bench_federated._fed(job, nodes, root)
    keys = ("wall_s", "to_aligned_s", "training_s", "auc", "bytes")
    print("AB", label, json.dumps({k: res[k] for k in keys}), flush=True)


if __name__ == "__main__":
    main()
