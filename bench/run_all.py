"""`make bench`: every benchmark in one go, each writing bench/results/<name>.json.

Each benchmark runs in its own process (fresh interpreter, no shared state) and prints its own
table; a failing benchmark is reported and the others still run. `--quick` for a smoke run.
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = [
    "eligibility",  # HE vs plaintext exchange, end to end
    "masking_leakage",  # what a masked value reveals
    "privacy",  # exact reveals, extra bits, silver identification, bronze attack, failed-check budget
    "sign_comparison",  # what a sign-only result (secure comparison) would cost against today's masks
    "sign_binding",  # whether a sign-only comparison bound to the decryption fits BFV's noise budget, and its size
    "transport_overhead",  # mTLS + signed envelopes vs none
    "security",  # envelope sign/verify, gRPC RTT
    "policy",  # Cedar decisions per second
    "audit",  # durable appends vs plain SQLite, proofs at 1M entries
    "audit_federation",  # two replicas: one log each (built) vs one log sequenced in PostgreSQL
    "federated",  # Census-Income: pooled vs single agency vs vertical/horizontal FL
    "dp_sweep",  # how record-level DP-SGD's clip and learning rate were chosen (validation split)
    "dp_sweep --standardise",  # standardise under record-level DP (noisy pooled statistics) vs the default encodings
    "dp_sweep --vertical-options",  # vertical record-DP: what the label holder could do with the same noisy embeddings
    "dp_sweep --vertical --calibrated",  # vertical record-DP with the top fitted on held-out rows: rounds, rate
    "dp_sweep --vertical-ceiling",  # vertical split learning without clip or noise, by steps: the structure's ceiling
    "dp_sweep --stacked",  # a stacked vertical job's part training under record-level DP, by setting
    "vertical_he_bound",  # what HE-based vertical logistic regression could reach under record-level DP
    "holdout_dp",  # the record-DP holdout release: the readout attack against its bound, the AUC estimate by bins
    "vertical_batches",  # the vertical job's default mini-batch against full batches (replay, validation split)
    "training_startup",  # a training job on Flower processes started per job vs the gateway's long-lived link
    "load",  # 1 to 1,000 concurrent clients: overload control, goodput, gateway memory, county link
]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for entry in BENCHMARKS:
        module, *options = entry.split()
        print(f"\n=== bench.{entry} ===", flush=True)
        started = time.perf_counter()
        args = [sys.executable, "-m", f"bench.{module}", *options, *(["--quick"] if quick else [])]
        if subprocess.run(args, check=False).returncode != 0:
            failed.append(entry)
        print(f"=== bench.{entry}: {time.perf_counter() - started:.0f} s ===", flush=True)
    subprocess.run([sys.executable, "-m", "bench.report"], check=False)  # docs/BENCHMARKS.md
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
