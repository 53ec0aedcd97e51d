"""Audit log: durable append throughput vs plain SQLite, and proof cost at a million entries.

Appends: AuditLog (WAL, synchronous=FULL, group commit, Merkle nodes + subject index; writer
thread in-process and writer in a child process, as the gateway runs it) against a
plain SQLite insert of the same rows into the same entries table (same pragmas, no tree), both one
transaction per row and batched (500 rows per transaction), with 1 and 32 writer threads; plus
AuditLog.append_async from 32 and 256 asyncio tasks. Every configuration is durable (fsync on
commit) except where noted.

Proofs: a log of 1,000,000 entries is built with append_many; then inclusion and consistency
proofs are generated from stored nodes and verified, against the baseline of recomputing the
root from all leaf hashes (what a log without stored interior nodes must do per proof).

    python -m bench.audit [--quick]      -> bench/results/audit.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from audit import merkle
from audit.db import SCHEMA_SQL, connect
from audit.records import AuditRecord
from audit.store import AuditLog, WriterKind
from audit.testing import ORIGIN, log_signer, pseudonym, record
from audit.writer import prepare

RESULTS = Path(__file__).parent / "results" / "audit.json"


def _records(n: int) -> list[AuditRecord]:
    base = record(0)
    subjects = [pseudonym(i) for i in range(min(n, 5000))]
    rng = random.Random(n)
    return [
        # Request ids are UUIDs at the gateway: random keys, as in production.
        base.model_copy(
            update={
                "request_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "subjects": (subjects[i % len(subjects)],),
            }
        )
        for i in range(n)
    ]


def _threads(n_threads: int, per_thread: int, work: Callable[[int, int], None]) -> float:
    def run(k: int) -> None:
        for i in range(per_thread):
            work(k, i)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n_threads * per_thread / (time.perf_counter() - t0)


def bench_auditlog(tmp: Path, recs: list[AuditRecord], n_threads: int, per_thread: int, writer: WriterKind) -> float:
    path = tmp / f"log-{n_threads}-{writer}-{time.monotonic_ns()}.db"  # a fresh log per measurement
    with AuditLog.open(path, origin=ORIGIN, writer=writer) as log:

        def one(k: int, i: int) -> None:
            log.append(recs[(k * per_thread + i) % len(recs)])

        return _threads(n_threads, per_thread, one)


def bench_async(tmp: Path, recs: list[AuditRecord], tasks: int, per_task: int, writer: WriterKind) -> float:
    async def main(log: AuditLog) -> float:
        async def one(k: int) -> None:
            for i in range(per_task):
                await log.append_async(recs[(k * per_task + i) % len(recs)])

        t0 = time.perf_counter()
        await asyncio.gather(*[one(k) for k in range(tasks)])
        return tasks * per_task / (time.perf_counter() - t0)

    path = tmp / f"async-{tasks}-{writer}-{time.monotonic_ns()}.db"
    with AuditLog.open(path, origin=ORIGIN, writer=writer) as log:
        return asyncio.run(main(log))


def bench_plain(tmp: Path, recs: list[AuditRecord], n_threads: int, per_thread: int, batch: int) -> float:
    """Plain inserts of the same entry rows (prepared the same way), `batch` rows per transaction."""
    path = tmp / f"plain-{n_threads}-{batch}.db"
    setup = connect(path)
    setup.executescript(SCHEMA_SQL)
    setup.close()
    counter = iter(range(10**12))
    lock = threading.Lock()
    local = threading.local()
    sql = "INSERT INTO entries VALUES(?,?,?,?,?,?,?,?,?,?,?)"

    def rows(k: int, i: int) -> list[tuple[Any, ...]]:
        out = []
        for j in range(batch):
            p = prepare(recs[(k * per_thread * batch + i * batch + j) % len(recs)])
            with lock:
                idx = next(counter)
            out.append((idx, p.leaf, p.data, *p.cols))
        return out

    def work(k: int, i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = connect(path)
        chunk = rows(k, i)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, chunk)
        conn.execute("COMMIT")

    return _threads(n_threads, per_thread, work) * batch


def _median_of(runs: int, measure: Callable[[], float]) -> dict[str, int]:
    """Durable appends depend on fsync latency, which varies run to run: report median and range."""
    rates = sorted(measure() for _ in range(runs))
    return {"median": round(statistics.median(rates)), "min": round(rates[0]), "max": round(rates[-1])}


def bench_appends(tmp: Path, quick: bool, runs: int = 5) -> dict[str, Any]:
    """Both writers (in-process thread, child process) against plain SQLite, in one run."""
    recs = _records(5000)
    single = 300 if quick else 2000
    per32 = 40 if quick else 300
    runs = 1 if quick else runs
    out: dict[str, Any] = {}
    for threads, per in ((1, single), (32, per32)):
        thread = _median_of(runs, partial(bench_auditlog, tmp, recs, threads, per, "thread"))
        process = _median_of(runs, partial(bench_auditlog, tmp, recs, threads, per, "process"))
        row_rate = bench_plain(tmp, recs, threads, max(per // 2, 10), 1)
        batch_rate = bench_plain(tmp, recs, threads, max(per // 50, 2), 500)
        best = max(thread["median"], process["median"])
        out[f"threads_{threads}"] = {
            "auditlog_entries_per_s": thread["median"],
            "auditlog_process_writer_entries_per_s": process["median"],
            "range_thread_writer": [thread["min"], thread["max"]],
            "range_process_writer": [process["min"], process["max"]],
            "plain_row_per_txn_entries_per_s": round(row_rate),
            "plain_batched_500_entries_per_s": round(batch_rate),
            "ratio_auditlog_vs_plain_row_per_txn": round(best / row_rate, 2),
            "ratio_auditlog_vs_plain_batched": round(best / batch_rate, 3),
        }
        print(f"appends, {threads} thread(s): {out[f'threads_{threads}']}", flush=True)
    for tasks, per_task in ((32, 300), (256, 40)):  # about 10,000 entries per measurement
        per_task = 20 if quick else per_task
        thread = _median_of(runs, partial(bench_async, tmp, recs, tasks, per_task, "thread"))
        process = _median_of(runs, partial(bench_async, tmp, recs, tasks, per_task, "process"))
        out[f"async_tasks_{tasks}"] = {
            "auditlog_entries_per_s": thread["median"],
            "auditlog_process_writer_entries_per_s": process["median"],
            "range_thread_writer": [thread["min"], thread["max"]],
            "range_process_writer": [process["min"], process["max"]],
        }
        print(f"appends, {tasks} asyncio tasks: {out[f'async_tasks_{tasks}']}", flush=True)
    return out


def _timeit(fn: Callable[[], object], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(0.99 * (len(samples) - 1))], 4),
        "mean_ms": round(statistics.fmean(samples), 4),
    }


def bench_proofs(tmp: Path, size: int) -> dict[str, Any]:
    rng = random.Random(7)
    signer = log_signer()
    recs = _records(20_000)
    with AuditLog.open(tmp / "big.db", signer=signer, origin=ORIGIN, max_batch=50_000) as log:
        t0 = time.perf_counter()
        chunk = 20_000
        for start in range(0, size, chunk):
            log.append_many(recs[: min(chunk, size - start)])
        build_s = time.perf_counter() - t0
        print(f"built {size} entries in {build_s:.1f} s", flush=True)
        cp = log.publish_checkpoint()
        root = cp.checkpoint.root
        indices = [rng.randrange(size) for _ in range(1000)]
        leaves = {i: log.entry(i).leaf_hash for i in indices}
        proofs = {i: log.inclusion_proof(i, size) for i in indices}
        it = iter(indices * 2)
        gen = _timeit(lambda: log.inclusion_proof(next(it), size), 1000)
        it2 = iter(indices * 2)

        def verify_one() -> None:
            i = next(it2)
            merkle.verify_inclusion(i, size, leaves[i], proofs[i], root)

        ver = _timeit(verify_one, 1000)
        olds = iter([rng.randrange(1, size) for _ in range(300)])
        cons = _timeit(lambda: log.consistency_proof(next(olds), size), 300)
        old = size // 3
        cproof = log.consistency_proof(old, size)
        cver = _timeit(lambda: merkle.verify_consistency(old, size, log.root(old), root, cproof), 100)
        # Baseline: no stored interior nodes, so a proof needs the root over all leaf hashes.
        conn = connect(tmp / "big.db", readonly=True)
        t0 = time.perf_counter()
        all_leaves = [bytes(r[0]) for r in conn.execute("SELECT leaf_hash FROM entries ORDER BY idx")]
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert merkle.root_of(all_leaves) == root
        rehash_s = time.perf_counter() - t0
        conn.close()
        db_mb = sum(p.stat().st_size for p in tmp.glob("big.db*")) / 1e6
    return {
        "entries": size,
        "build_seconds_append_many": round(build_s, 1),
        "build_entries_per_s": round(size / build_s),
        "db_megabytes": round(db_mb, 1),
        "inclusion_proof_generate": gen,
        "inclusion_proof_verify": ver,
        "inclusion_proof_nodes": len(proofs[indices[0]]),
        "consistency_proof_generate": cons,
        "consistency_proof_verify": cver,
        "baseline_rehash_all_leaves_ms": round(rehash_s * 1000, 1),
        "baseline_read_all_leaves_ms": round(read_s * 1000, 1),
        "ratio_baseline_vs_stored_nodes_proof": round(rehash_s * 1000 / gen["median_ms"]),
    }


TARGET_ENTRIES_PER_S = 10_000
TARGET_PROOF_MS = 1.0


def _targets(appends: dict[str, Any], proofs: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, per configuration, with the better of the two writers."""
    met: dict[str, Any] = {}
    for name, row in appends.items():
        best = max(row["auditlog_entries_per_s"], row["auditlog_process_writer_entries_per_s"])
        met[name] = {"best_entries_per_s": best, "met": best >= TARGET_ENTRIES_PER_S}
    slowest = max(v["median_ms"] for k, v in proofs.items() if isinstance(v, dict) and "median_ms" in v)
    return {
        "entries_per_s": TARGET_ENTRIES_PER_S,
        "appends": met,
        "proof_ms": TARGET_PROOF_MS,
        "slowest_proof_median_ms": slowest,
        "proofs_met": slowest < TARGET_PROOF_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--size", type=int, default=None, help="entries for the proof benchmark")
    args = parser.parse_args()
    size = args.size or (20_000 if args.quick else 1_000_000)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".audit-bench-", dir=RESULTS.parent))
    try:
        appends = bench_appends(tmp, args.quick)
        proofs = bench_proofs(tmp, size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "audit",
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version},
        "durability": "WAL + synchronous=FULL for every configuration",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # other work on the shared cores
        "appends": appends,
        "proofs": proofs,
        "targets": _targets(appends, proofs),
    }
    path = RESULTS if not args.quick else RESULTS.with_name("audit-quick.json")  # a smoke run never replaces figures
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
