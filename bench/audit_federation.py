"""The federation's audit log with two gateway replicas: one log per replica (chosen) against one
log whose sequence is assigned in PostgreSQL (the alternative), both against one process.

Each configuration appends the same records from asyncio tasks in each process, as a gateway does
(`AuditLog.append_async`, durable before it returns), and reports appends per second over all
processes and the per-append latency (p50, p99):

* `one_process`: one gateway's log, the single-process baseline;
* `per_replica_logs` (the design built, docs/AUDIT.md "Replicas"): two processes at once, each
  appending to its own log (its own SQLite file and writer);
* `postgres_sequence` (the alternative): two processes at once appending to one log in PostgreSQL.
  Only its unavoidable part is measured: each group commit (up to 16 records, like the gateway's
  event-loop hand-over) takes the log's sequence under one advisory lock and inserts its entries
  with their indices and leaf hashes, durable (synchronous_commit on) before the appends return. The
  Merkle nodes, index and checkpoints it would also need are left out, so its figures are an upper
  bound on what that design could reach.

    python -m bench.audit_federation [--quick] [--database URL]   -> bench/results/audit_federation.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from audit.merkle import leaf_hash
from audit.records import AuditRecord
from audit.store import AuditLog
from audit.testing import record

RESULTS = Path(__file__).parent / "results" / "audit_federation.json"
DEFAULT_DATABASE = os.environ.get("XGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ORIGIN = "xgate.gateway.bench/audit"
CHUNK = 16  # the gateway's event loop hands its appends over in chunks of up to 16


def _records(n: int, seed: int) -> list[AuditRecord]:
    return [record(seed * 1_000_000 + i, request_id=f"req-{seed}-{i}") for i in range(n)]


async def _drive(append: Any, recs: list[AuditRecord], tasks: int) -> list[float]:
    latencies: list[float] = []
    per_task = len(recs) // tasks

    async def one(k: int) -> None:
        for i in range(per_task):
            t0 = time.perf_counter()
            await append(recs[k * per_task + i])
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one(k) for k in range(tasks)))
    return latencies


def _sqlite_worker(path: str, n: int, tasks: int, seed: int, start: Any, out: Any) -> None:
    recs = _records(n, seed)
    with AuditLog.open(Path(path), origin=ORIGIN, writer="thread") as log:
        start.wait()
        t0 = time.perf_counter()
        latencies = asyncio.run(_drive(log.append_async, recs, tasks))
        out.put((time.perf_counter() - t0, latencies))


class _PostgresLog:
    """The alternative's core: sequence assigned in PostgreSQL, entries durable there, batched."""

    def __init__(self, conn: Any, table: str) -> None:
        self.conn, self.table = conn, table
        self.queue: list[tuple[bytes, asyncio.Future[int]]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def append(self, rec: AuditRecord) -> int:
        data = rec.canonical()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.queue.append((data, future))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[:CHUNK], self.queue[CHUNK:]
            async with self.conn.transaction():
                await self.conn.execute("SELECT pg_advisory_xact_lock(7867, 1)")  # one sequence for the log
                cur = await self.conn.execute(f"SELECT COALESCE(MAX(idx) + 1, 0) FROM {self.table}")
                row = await cur.fetchone()
                first = int(row[0])
                rows = [(first + i, leaf_hash(d), d) for i, (d, _) in enumerate(batch)]
                async with self.conn.cursor() as c:
                    await c.executemany(f"INSERT INTO {self.table} (idx, leaf_hash, data) VALUES (%s, %s, %s)", rows)
            for i, (_, future) in enumerate(batch):
                future.set_result(first + i)


def _postgres_worker(url: str, table: str, n: int, tasks: int, seed: int, start: Any, out: Any) -> None:
    import psycopg

    recs = _records(n, seed)

    async def main() -> tuple[float, list[float]]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            log = _PostgresLog(conn, table)
            start.wait()
            t0 = time.perf_counter()
            latencies = await _drive(log.append, recs, tasks)
            return time.perf_counter() - t0, latencies

    out.put(asyncio.run(main()))


def _run(targets: list[tuple[Any, tuple[Any, ...]]]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(len(targets) + 1), ctx.Queue()
    procs = [ctx.Process(target=fn, args=(*args, start, out)) for fn, args in targets]
    for p in procs:
        p.start()
    start.wait()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    latencies = sorted(x for _, lat in results for x in lat)
    appends = len(latencies)
    wall = max(seconds for seconds, _ in results)
    return {
        "processes": len(procs),
        "appends": appends,
        "appends_per_s": round(appends / wall),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
        "latency_ms_p99": round(latencies[int(0.99 * (appends - 1))] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (results go to a -quick file)")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="PostgreSQL URL for the alternative")
    parser.add_argument("--tasks", type=int, default=32, help="concurrent appenders per process")
    args = parser.parse_args()
    n = 640 if args.quick else 6400
    import psycopg

    table = f"bench_audit_{secrets.token_hex(4)}"
    with psycopg.connect(args.database, autocommit=True) as admin:
        admin.execute(f"CREATE TABLE {table} (idx BIGINT PRIMARY KEY, leaf_hash BYTEA NOT NULL, data BYTEA NOT NULL)")
    try:
        with tempfile.TemporaryDirectory(prefix="xgate-bench-fed-") as tmp:
            one = _run([(_sqlite_worker, (f"{tmp}/one.sqlite", n, args.tasks, 1))])
            per_replica = _run([(_sqlite_worker, (f"{tmp}/r{k}.sqlite", n, args.tasks, 10 + k)) for k in range(2)])
            pg = _run([(_postgres_worker, (args.database, table, n, args.tasks, 20 + k)) for k in range(2)])
    finally:
        with psycopg.connect(args.database, autocommit=True) as admin:
            admin.execute(f"DROP TABLE IF EXISTS {table}")
    result = {
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "tasks_per_process": args.tasks,
        "one_process": one,
        "per_replica_logs": per_replica,
        "postgres_sequence": pg,
        "per_replica_vs_one": round(per_replica["appends_per_s"] / one["appends_per_s"], 2),
        "postgres_sequence_vs_one": round(pg["appends_per_s"] / one["appends_per_s"], 2),
    }
    path = RESULTS if not args.quick else RESULTS.with_name("audit_federation-quick.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
