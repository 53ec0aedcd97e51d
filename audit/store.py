"""AuditLog: the Merkle log over SQLite, with durable group commit.

One writer thread owns the write connection. Appends from any thread or asyncio task are validated
and hashed by the caller, queued, committed in one transaction per batch (WAL, synchronous=FULL, so
a commit is on disk), and only then acknowledged. While one batch fsyncs, the next one gathers, so
throughput grows with concurrency instead of being capped at one fsync per entry.

Every complete subtree hash is stored when it is completed (table ``nodes``; leaves live in
``entries``), so roots and proofs need O(log n) lookups and never rehash the log.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from audit import merkle
from audit.checkpoints import (
    Checkpoint,
    CosignatureVerifier,
    SignedCheckpoint,
    Signer,
    add_cosignature,
    parse_signed_note,
)
from audit.records import AuditRecord, coerce, now_ms, sha256_hex
from xgate.errors import ConfigError, IntegrityError, InvalidInput, NotFound, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.audit")
DEFAULT_ORIGIN = "xgate.local/audit"
MAX_PAGE = 1000

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries(
  idx INTEGER PRIMARY KEY, leaf_hash BLOB NOT NULL, data BLOB NOT NULL,
  kind TEXT NOT NULL, time_ms INTEGER NOT NULL, user TEXT NOT NULL, agency TEXT NOT NULL,
  program TEXT, purpose TEXT, decision TEXT, request_id TEXT);
CREATE INDEX IF NOT EXISTS entries_request ON entries(request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_user ON entries(user, idx);
CREATE INDEX IF NOT EXISTS entries_agency ON entries(agency, idx);
CREATE INDEX IF NOT EXISTS entries_time ON entries(time_ms);
CREATE TABLE IF NOT EXISTS entry_subjects(pseudonym TEXT NOT NULL, idx INTEGER NOT NULL,
  PRIMARY KEY(pseudonym, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes(level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
  PRIMARY KEY(level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints(id INTEGER PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL,
  note TEXT NOT NULL, time_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cosignatures(checkpoint_id INTEGER NOT NULL, witness TEXT NOT NULL,
  line TEXT NOT NULL, time_ms INTEGER NOT NULL, PRIMARY KEY(checkpoint_id, witness));
"""


class AuditUnavailable(XgateError):
    """The audit write failed; the action it records must fail too (fail closed)."""

    code = "audit_unavailable"
    http_status = 503
    grpc_status = "UNAVAILABLE"


@dataclass(frozen=True)
class AppendReceipt:
    index: int
    leaf_hash: bytes  # RFC 6962 leaf hash, SHA256(0x00 || canonical record)
    entry_hash: str  # sha256 hex of the canonical record bytes
    tree_size: int  # size of the tree committed together with this entry
    root: bytes  # root hash at tree_size


@dataclass(frozen=True)
class Entry:
    index: int
    leaf_hash: bytes
    data: bytes
    record: AuditRecord


@dataclass
class _Pending:
    data: bytes
    leaf: bytes
    cols: tuple[Any, ...]
    subjects: tuple[str, ...]


@dataclass
class _Job:
    future: Future[Any]
    pendings: list[_Pending] = field(default_factory=list)
    op: Callable[[sqlite3.Connection, merkle.Frontier], Any] | None = None


_STOP = object()


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def fetch_nodes(conn: sqlite3.Connection) -> merkle.FetchNodes:
    def fetch(ids: Sequence[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        out: dict[merkle.NodeId, bytes] = {}
        for level, index in ids:
            if level == 0:
                row = conn.execute("SELECT leaf_hash FROM entries WHERE idx=?", (index,)).fetchone()
            else:
                row = conn.execute("SELECT hash FROM nodes WHERE level=? AND idx=?", (level, index)).fetchone()
            if row is not None:
                out[(level, index)] = bytes(row[0])
        return out

    return fetch


def _prepare(record: AuditRecord | Mapping[str, Any]) -> _Pending:
    rec = coerce(record)
    data = rec.canonical()
    a = rec.actor
    cols = (rec.kind, rec.time_ms, a.user, a.agency, rec.program, rec.purpose, rec.decision, rec.request_id)
    return _Pending(data, merkle.leaf_hash(data), cols, tuple(dict.fromkeys(rec.subjects)))


class AuditLog:
    """Append-only audit log. Thread-safe; use ``AuditLog.open`` and ``close`` (or ``with``)."""

    def __init__(self, path: Path, origin: str, signer: Signer | None, max_batch: int, linger: float) -> None:
        self.path = path
        self.origin = origin
        self.signer = signer
        self._max_batch = max_batch
        self._linger = linger
        self._last_batch = 1
        self._wconn = connect(path)
        self._wconn.executescript(SCHEMA_SQL)
        self._check_meta()
        size = int(self._wconn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0])
        ids = merkle.Frontier.node_ids(size)
        got = fetch_nodes(self._wconn)(ids)
        if len(got) != len(ids):
            raise IntegrityError("audit log tree nodes are missing; run `xgate audit verify-log`")
        self._frontier = merkle.Frontier(size, [got[i] for i in ids])
        self._size = size
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBatcher] = weakref.WeakKeyDictionary()
        self._stop_timer = threading.Event()
        self._timer: threading.Thread | None = None
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        signer: Signer | None = None,
        origin: str = DEFAULT_ORIGIN,
        checkpoint_interval: float | None = None,
        max_batch: int = 4096,
        linger: float = 0.001,
    ) -> AuditLog:
        """Open (creating if needed) the log at ``path``; publish a checkpoint every interval seconds."""
        if signer is not None and signer.name != origin:
            raise ConfigError("the log signing key must be named after the log origin", origin=origin)
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            self = cls(p, origin, signer, max_batch, linger)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open audit log '{p.name}'") from exc
        if checkpoint_interval is not None:
            self.start_checkpointing(checkpoint_interval)
        return self

    def _check_meta(self) -> None:
        row = self._wconn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()
        if row is None:
            self._wconn.execute("INSERT INTO meta VALUES('origin', ?), ('schema', 'xgate-audit-db/1')", (self.origin,))
        elif row[0] != self.origin:
            raise ConfigError("audit log origin does not match the database", expected=self.origin)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def _submit(self, job: _Job) -> Future[Any]:
        if self._closed:
            raise ConfigError("audit log is closed")
        self._queue.put(job)
        return job.future

    def append(self, record: AuditRecord | Mapping[str, Any]) -> AppendReceipt:
        """Durably append one record; blocks until committed. Raises InvalidInput for bad records."""
        result: list[AppendReceipt] = self._submit(_Job(Future(), [_prepare(record)])).result()
        return result[0]

    async def append_async(self, record: AuditRecord | Mapping[str, Any]) -> AppendReceipt:
        """As ``append``, awaiting the commit without blocking the event loop.

        Appends made in one event-loop iteration travel to the writer as one job and come back
        in one thread-safe callback, so the loop and the writer hand over once per batch.
        """
        if self._closed:
            raise ConfigError("audit log is closed")
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _LoopBatcher(self, loop)
        return await batcher.add(_prepare(record))

    def append_many(self, records: Iterable[AuditRecord | Mapping[str, Any]]) -> list[AppendReceipt]:
        """Append several records atomically (one transaction), in order."""
        pendings = [_prepare(r) for r in records]
        if not pendings:
            return []
        result: list[AppendReceipt] = self._submit(_Job(Future(), pendings)).result()
        return result

    def _run(self) -> None:
        stop = False
        while not stop:
            jobs = [self._queue.get()]
            n = len(jobs[0].pendings) if jobs[0] is not _STOP else 0
            deadline = time.monotonic() + self._linger
            while n < self._max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    # Writers just acknowledged are still re-submitting: wait briefly for as many
                    # as the last batch had, so batches stay large instead of alternating halves.
                    remaining = deadline - time.monotonic()
                    if n >= self._last_batch or remaining <= 0:
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

    def _commit_appends(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        frontier = self._frontier.copy()
        entries: list[tuple[Any, ...]] = []
        nodes: list[tuple[int, int, bytes]] = []
        subjects: list[tuple[str, int]] = []
        results: list[list[tuple[int, _Pending]]] = []
        for job in jobs:
            mine = []
            for p in job.pendings:
                idx = frontier.size
                entries.append((idx, p.leaf, p.data, *p.cols))
                subjects.extend((s, idx) for s in p.subjects)
                nodes.extend(frontier.append(p.leaf))
                mine.append((idx, p))
            results.append(mine)
        conn = self._wconn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO entries VALUES(?,?,?,?,?,?,?,?,?,?,?)", entries)
            conn.executemany("INSERT INTO nodes VALUES(?,?,?)", nodes)
            conn.executemany("INSERT INTO entry_subjects VALUES(?,?)", subjects)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.error("audit_write_failed", error=type(exc).__name__, entries=len(entries))
            for job in jobs:
                job.future.set_exception(AuditUnavailable("audit log write failed"))
            return
        self._frontier = frontier
        self._size = frontier.size
        root = frontier.root()
        for job, mine in zip(jobs, results, strict=True):
            job.future.set_result([AppendReceipt(i, p.leaf, sha256_hex(p.data), frontier.size, root) for i, p in mine])

    def _run_op(self, job: _Job) -> None:
        assert job.op is not None
        conn = self._wconn
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = job.op(conn, self._frontier)
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            job.future.set_exception(exc if isinstance(exc, XgateError) else AuditUnavailable("audit log write failed"))
        else:
            job.future.set_result(result)

    def close(self) -> None:
        if self._closed:
            return
        self._stop_timer.set()
        if self._timer is not None:
            self._timer.join()
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join()
        self._wconn.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- checkpoints ---------------------------------------------------------------------------

    def publish_checkpoint(self, *, force: bool = False) -> SignedCheckpoint:
        """Sign and store a checkpoint of the current tree (reuses the latest one if nothing changed)."""
        signer = self.signer
        if signer is None:
            raise ConfigError("audit log has no signing key; cannot publish checkpoints")

        def op(conn: sqlite3.Connection, frontier: merkle.Frontier) -> SignedCheckpoint:
            row = conn.execute("SELECT id, note, size FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
            if row is not None and row[2] == frontier.size and not force:
                return _with_cosignatures(conn, row)
            signed = signer.sign(Checkpoint(self.origin, frontier.size, frontier.root()))
            conn.execute(
                "INSERT INTO checkpoints(size, root, note, time_ms) VALUES(?,?,?,?)",
                (frontier.size, frontier.root(), signed.text(), int(now_ms().timestamp() * 1000)),
            )
            log.info("audit_checkpoint", origin=self.origin, size=frontier.size, root=frontier.root().hex())
            return signed

        result: SignedCheckpoint = self._submit(_Job(Future(), op=op)).result()
        return result

    def start_checkpointing(self, interval: float) -> None:
        if self.signer is None:
            raise ConfigError("periodic checkpoints need a signing key")
        if interval <= 0 or self._timer is not None:
            raise ConfigError("checkpoint interval must be positive and set once")

        def loop() -> None:
            while not self._stop_timer.wait(interval):
                try:
                    self.publish_checkpoint()
                except XgateError as exc:
                    log.error("audit_checkpoint_failed", error=exc.code)

        self._timer = threading.Thread(target=loop, name="audit-checkpointer", daemon=True)
        self._timer.start()

    def add_cosignature(self, size: int, line: str, verifier: CosignatureVerifier | None = None) -> SignedCheckpoint:
        """Attach a witness cosignature line to the latest stored checkpoint of ``size``."""
        cp = self.checkpoint_at(size)
        merged = add_cosignature(cp, line)
        sig = merged.signatures[-1]
        if verifier is not None:
            verifier.verify(merged)
        row = self._reader().execute("SELECT MAX(id) FROM checkpoints WHERE size=?", (size,)).fetchone()

        def op(conn: sqlite3.Connection, _: merkle.Frontier) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO cosignatures VALUES(?,?,?,?)",
                (row[0], sig.name, sig.text(), int(now_ms().timestamp() * 1000)),
            )

        self._submit(_Job(Future(), op=op)).result()
        return self.checkpoint_at(size)

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        row = self._reader().execute("SELECT id, note FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else _with_cosignatures(self._reader(), row)

    def checkpoint_at(self, size: int) -> SignedCheckpoint:
        row = (
            self._reader()
            .execute("SELECT id, note FROM checkpoints WHERE size=? ORDER BY id DESC LIMIT 1", (size,))
            .fetchone()
        )
        if row is None:
            raise NotFound("no checkpoint at that size", size=size)
        return _with_cosignatures(self._reader(), row)

    def checkpoints(self, offset: int = 0, limit: int = 100) -> list[SignedCheckpoint]:
        rows = (
            self._reader()
            .execute(
                "SELECT id, note FROM checkpoints ORDER BY id DESC LIMIT ? OFFSET ?", (min(limit, MAX_PAGE), offset)
            )
            .fetchall()
        )
        return [_with_cosignatures(self._reader(), r) for r in rows]

    def witness_request(self, old_size: int) -> tuple[str, list[bytes]]:
        """Latest checkpoint note + consistency proof from ``old_size``: what a Witness.cosign needs."""
        cp = self.latest_checkpoint()
        if cp is None:
            raise NotFound("no checkpoint published yet")
        new = cp.checkpoint.size
        proof = [] if old_size in (0, new) else self.consistency_proof(old_size, new)
        return cp.text(), proof

    # -- reading -------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise ConfigError("audit log is closed")
            conn = connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @property
    def size(self) -> int:
        """Number of committed entries."""
        return self._size

    def root(self, size: int | None = None) -> bytes:
        size = self._size if size is None else size
        self._check_size(size)
        return merkle.root_from_nodes(size, fetch_nodes(self._reader()))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self._size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise NotFound("no entry at that index in a tree of that size", index=index, size=size)
        return merkle.inclusion_proof(index, size, fetch_nodes(self._reader()))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = self._size if new is None else new
        self._check_size(new)
        if not 0 < old <= new:
            raise InvalidInput("consistency proofs need 0 < old <= new", old=old, new=new)
        return merkle.consistency_proof(old, new, fetch_nodes(self._reader()))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise NotFound("tree size is beyond the log", size=size, log_size=self._size)

    def entry(self, index: int) -> Entry:
        row = (
            self._reader()
            .execute("SELECT idx, leaf_hash, data FROM entries WHERE idx=? AND idx<?", (index, self._size))
            .fetchone()
        )
        if row is None:
            raise NotFound("no audit entry at that index", index=index)
        return _entry(row)

    def entries(
        self,
        *,
        agency: str | None = None,
        user: str | None = None,
        program: str | None = None,
        purpose: str | None = None,
        decision: str | None = None,
        subject: str | None = None,
        kind: str | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Entry]:
        """Entries matching every given filter, oldest first; ``until`` is exclusive."""
        if offset < 0 or not 0 < limit <= MAX_PAGE:
            raise InvalidInput(f"offset must be >= 0 and limit in 1..{MAX_PAGE}")
        where: list[str] = ["idx < ?"]
        args: list[Any] = [self._size]
        for col, val in (
            ("agency", agency),
            ("user", user),
            ("program", program),
            ("purpose", purpose),
            ("decision", decision),
            ("kind", kind),
            ("request_id", request_id),
        ):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if subject is not None:
            where.append("idx IN (SELECT idx FROM entry_subjects WHERE pseudonym = ?)")
            args.append(subject)
        if since is not None:
            where.append("time_ms >= ?")
            args.append(int(since.timestamp() * 1000))
        if until is not None:
            where.append("time_ms < ?")
            args.append(int(until.timestamp() * 1000))
        sql = f"SELECT idx, leaf_hash, data FROM entries WHERE {' AND '.join(where)} ORDER BY idx LIMIT ? OFFSET ?"  # noqa: S608 (fixed column names)
        rows = self._reader().execute(sql, (*args, limit, offset)).fetchall()
        return [_entry(r) for r in rows]


class _LoopBatcher:
    """Collects one event loop's appends per loop iteration into a single writer job."""

    def __init__(self, log: AuditLog, loop: asyncio.AbstractEventLoop) -> None:
        self._log = log
        self._loop = loop
        self._items: list[tuple[_Pending, asyncio.Future[AppendReceipt]]] = []

    def add(self, pending: _Pending) -> asyncio.Future[AppendReceipt]:
        fut: asyncio.Future[AppendReceipt] = self._loop.create_future()
        if not self._items:
            self._loop.call_soon(self._flush)
        self._items.append((pending, fut))
        return fut

    def _flush(self) -> None:
        items, self._items = self._items, []
        try:
            done = self._log._submit(_Job(Future(), [p for p, _ in items]))
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
        items: list[tuple[_Pending, asyncio.Future[AppendReceipt]]],
    ) -> None:
        for i, (_, fut) in enumerate(items):
            if fut.done():
                continue
            if receipts is None:
                fut.set_exception(exc or AuditUnavailable("audit log write failed"))
            else:
                fut.set_result(receipts[i])


def _entry(row: tuple[int, bytes, bytes]) -> Entry:
    idx, leaf, data = row[0], bytes(row[1]), bytes(row[2])
    if merkle.leaf_hash(data) != leaf:
        raise IntegrityError("stored audit entry does not match its leaf hash", index=idx)
    try:
        record = AuditRecord.parse(data)
    except InvalidInput as exc:
        raise IntegrityError("stored audit entry is not a valid record", index=idx) from exc
    return Entry(idx, leaf, data, record)


def _with_cosignatures(conn: sqlite3.Connection, row: tuple[Any, ...]) -> SignedCheckpoint:
    signed = parse_signed_note(row[1])
    lines = conn.execute("SELECT line FROM cosignatures WHERE checkpoint_id=? ORDER BY witness", (row[0],))
    for (line,) in lines.fetchall():
        signed = add_cosignature(signed, line)
    return signed
