"""Durable group commit: one writer thread owns the write connection and commits appends in batches.

Callers validate, canonicalise and hash their records (``prepare``) and queue them; the writer
commits everything queued in one transaction (WAL, synchronous=FULL, so a commit is on disk) and
only then acknowledges. The lookup index by pseudonym and request id follows in later, larger
transactions (audit/index.py). While one batch fsyncs the next one gathers, so throughput grows with
concurrency instead of being capped at one fsync per entry. Other writes (checkpoints,
cosignatures) run on the same thread as ``Op`` callables, so the tree never changes under them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from audit import index, merkle
from audit.records import AuditRecord, coerce
from xgate.errors import AuditUnavailable as AuditUnavailable  # re-exported: raised here
from xgate.errors import ConfigError, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.audit")

Op = Callable[[sqlite3.Connection, merkle.Frontier], Any]
Statements = list[tuple[str, tuple[Any, ...]]]  # SQL run in one transaction after queued appends


@dataclass(frozen=True)
class AppendReceipt:
    index: int
    leaf_hash: bytes  # RFC 6962 leaf hash, SHA256(0x00 || canonical record)
    entry_hash: str  # sha256 hex of the canonical record bytes
    tree_size: int  # size of the tree committed together with this entry
    root: bytes  # root hash at tree_size


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated record ready to commit: canonical bytes, both hashes, filter columns, subjects."""

    data: bytes
    leaf: bytes
    entry_hash: str
    cols: tuple[Any, ...]
    subjects: tuple[str, ...]

    @property
    def request_id(self) -> str | None:
        return self.cols[7]  # type: ignore[no-any-return]


def prepare(record: AuditRecord | Mapping[str, Any]) -> Prepared:
    rec = coerce(record)
    data = rec.canonical()
    a = rec.actor
    cols = (rec.kind, rec.time_ms, a.user, a.agency, rec.program, rec.purpose, rec.decision, rec.request_id)
    return Prepared(
        data, merkle.leaf_hash(data), hashlib.sha256(data).hexdigest(), cols, tuple(dict.fromkeys(rec.subjects))
    )


@dataclass
class _Job:
    future: Future[Any]
    pendings: list[Prepared] = field(default_factory=list)
    op: Op | None = None
    gather: bool = True  # worth lingering for: more appends like it are about to arrive


_STOP = object()
# An event loop hands over at most this many appends at once. Smaller hand-overs pipeline: the
# writer commits one part (mostly waiting on fsync) while the loop prepares the next. 16 was
# measured best for 32 and for 256 concurrent appenders with the process writer (8 and 32: slower).
LOOP_CHUNK = 16


class GroupCommitWriter:
    """Owns the write connection and the tree frontier; everything that writes goes through it."""

    def __init__(
        self, conn: sqlite3.Connection, frontier: merkle.Frontier, max_batch: int, linger: float, lock_fd: int = -1
    ) -> None:
        self._conn = conn
        self._lock_fd = lock_fd  # the single-writer lock (audit/db.py), released on close
        self.frontier = frontier  # replaced (never mutated) after each commit
        self._max_batch = max_batch
        self._linger = linger
        self._last_batch = 1
        self._index = index.catch_up(conn, frontier.size, _insert_rows)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def _submit(self, job: _Job) -> Future[Any]:
        if self.closed:
            raise ConfigError("audit log is closed")
        self._queue.put(job)
        return job.future

    def appends(self, pendings: list[Prepared], gather: bool = True) -> Future[list[AppendReceipt]]:
        """Queue records to commit together, in order; the future resolves once they are durable.

        ``gather=False``: the caller batched already (an event loop's hand-over); the writer commits
        what is queued at once instead of lingering for more.
        """
        return self._submit(_Job(Future(), pendings, gather=gather))

    def op(self, op: Op) -> Future[Any]:
        """Run ``op`` in its own transaction on the writer thread (after everything queued before)."""
        return self._submit(_Job(Future(), op=op))

    def execute(self, statements: Statements) -> Future[None]:
        """Run SQL statements (checkpoints, cosignatures) in one transaction on the writer thread."""

        def run(conn: sqlite3.Connection, _: merkle.Frontier) -> None:
            for sql, params in statements:
                conn.execute(sql, params)

        return self.op(run)

    @property
    def size(self) -> int:
        """Entries committed and acknowledged so far."""
        return self.frontier.size

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._conn.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)

    def _run(self) -> None:
        stop = False
        while not stop:
            backlog = self._index.end > self._index.upto
            try:
                # With lookup rows waiting, a pause in appends is the moment to index them.
                first = self._queue.get(timeout=index.IDLE_S) if backlog else self._queue.get()
            except queue.Empty:
                self._flush_index()
                continue
            jobs = [first]
            n = len(first.pendings) if first is not _STOP else 0
            gathering = first is not _STOP and first.gather
            deadline = time.monotonic() + self._linger
            while n < self._max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    # Writers just acknowledged are still re-submitting: wait briefly for as many
                    # as the last batch had, so batches stay large instead of alternating halves.
                    remaining = deadline - time.monotonic()
                    if not gathering or n >= self._last_batch or remaining <= 0:
                        break
                    try:
                        job = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                jobs.append(job)
                n += len(job.pendings) if job is not _STOP else 0
            self._last_batch = n
            if _STOP in jobs:
                stop = True
                jobs = [j for j in jobs if j is not _STOP]
            self._commit_appends([j for j in jobs if j.op is None])
            for job in jobs:
                if job.op is not None:
                    self._run_op(job)
            if stop or self._index.pending_rows >= index.BACKLOG_ROWS:
                self._flush_index()

    def _flush_index(self) -> None:
        try:
            self._index.flush(self._conn, _insert_rows)
        except sqlite3.Error as exc:  # entries stay durable and findable (readers scan the tail)
            log.error("audit_index_failed", error=type(exc).__name__, backlog=self._index.pending_rows)

    def _commit_appends(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        frontier = self.frontier.copy()
        entries: list[tuple[Any, ...]] = []
        nodes: list[tuple[int, int, bytes]] = []
        subjects: list[index.Row] = []
        requests: list[index.Row] = []
        first = frontier.size
        for job in jobs:
            for p in job.pendings:
                idx = frontier.size
                entries.append((idx, p.leaf, p.data, *p.cols))
                if p.subjects:
                    subjects.extend([(s, idx) for s in p.subjects])
                if p.request_id is not None:
                    requests.append((p.request_id, idx))
                nodes.extend(frontier.append(p.leaf))
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            _insert_rows(conn, "entries", 11, entries)
            _insert_rows(conn, "nodes", 3, nodes)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.error("audit_write_failed", error=type(exc).__name__, entries=len(entries))
            for job in jobs:
                job.future.set_exception(AuditUnavailable("audit log write failed"))
            return
        self.frontier = frontier
        self._index.add(subjects, requests, frontier.size)
        size, root = frontier.size, frontier.root()
        idx = first
        for job in jobs:
            receipts = []
            for p in job.pendings:
                receipts.append(AppendReceipt(idx, p.leaf, p.entry_hash, size, root))
                idx += 1
            job.future.set_result(receipts)

    def _run_op(self, job: _Job) -> None:
        assert job.op is not None
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = job.op(conn, self.frontier)
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001  # any failure rolls back and reaches the waiting appenders
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            job.future.set_exception(exc if isinstance(exc, XgateError) else AuditUnavailable("audit log write failed"))
        else:
            job.future.set_result(result)


_MAX_VARIABLES = 32_766  # SQLite's default SQLITE_MAX_VARIABLE_NUMBER since 3.32


def _insert_rows(conn: sqlite3.Connection, table: str, width: int, rows: list[tuple[Any, ...]]) -> None:
    """Insert rows with as few statements as possible.

    One multi-row INSERT is one sqlite3_step, so the writer re-takes the GIL once per statement
    instead of once per row (executemany), and does not queue behind the event loop per row.
    """
    per = _MAX_VARIABLES // width
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        values = ",".join([_row_params(width)] * len(chunk))
        conn.execute(f"INSERT INTO {table} VALUES {values}", [v for row in chunk for v in row])  # noqa: S608 (fixed names)


@functools.cache
def _row_params(width: int) -> str:
    return "(" + ",".join("?" * width) + ")"


class BatchWriter(Protocol):
    """What a LoopBatcher needs: GroupCommitWriter here, or ProcessWriter (audit/writer_process.py)."""

    def appends(self, pendings: list[Prepared], gather: bool = True) -> Future[list[AppendReceipt]]: ...


class LoopBatcher:
    """Collects one event loop's appends into writer jobs of up to LOOP_CHUNK per loop iteration.

    The loop and the writer hand over once per chunk (one thread-safe callback resolves a whole
    chunk), not once per append, and the writer does not linger for more: the loop already
    batched, and the next chunk is being prepared while this one commits.
    """

    def __init__(self, writer: BatchWriter, loop: asyncio.AbstractEventLoop) -> None:
        self._writer = writer
        self._loop = loop
        self._items: list[tuple[Prepared, asyncio.Future[AppendReceipt]]] = []

    def add(self, pending: Prepared) -> asyncio.Future[AppendReceipt]:
        fut: asyncio.Future[AppendReceipt] = self._loop.create_future()
        if not self._items:
            self._loop.call_soon(self._flush)
        self._items.append((pending, fut))
        if len(self._items) >= LOOP_CHUNK:
            self._flush()
        return fut

    def _flush(self) -> None:
        items, self._items = self._items, []
        if not items:
            return
        try:
            done = self._writer.appends([p for p, _ in items], gather=False)
        except XgateError as exc:
            self._resolve(None, exc, items)
            return

        def back(f: Future[Any]) -> None:
            exc = f.exception()
            self._loop.call_soon_threadsafe(self._resolve, None if exc else f.result(), exc, items)

        done.add_done_callback(back)

    @staticmethod
    def _resolve(
        receipts: list[AppendReceipt] | None,
        exc: BaseException | None,
        items: list[tuple[Prepared, asyncio.Future[AppendReceipt]]],
    ) -> None:
        for i, (_, fut) in enumerate(items):
            if fut.done():
                continue
            if receipts is None:
                fut.set_exception(exc or AuditUnavailable("audit log write failed"))
            else:
                fut.set_result(receipts[i])
