"""AuditLog: the append-only Merkle log over SQLite (RFC 6962/9162), with durable group commit.

Writes go through one group-commit writer, on a thread of this process (audit/writer.py) or in a
child process (audit/writer_process.py); either way an append is acknowledged only after its batch
is committed to disk, and one lock file keeps a log to one writer. Every complete subtree hash is
stored when it is completed (table ``nodes``; leaves live in ``entries``, see audit/db.py), so
roots and proofs need O(log n) lookups and never rehash the log. Readers use their own per-thread
connections (WAL).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from audit import index, merkle
from audit.checkpoints import Checkpoint, CosignatureVerifier, SignedCheckpoint, Signer, add_cosignature
from audit.db import (
    MAX_PAGE,
    SCHEMA_SQL,
    Entry,
    acquire_writer_lock,
    connect,
    entry_from_row,
    fetch_nodes,
    load_frontier,
    with_cosignatures,
)
from audit.records import AuditRecord, now_ms
from audit.writer import AppendReceipt, AuditUnavailable, GroupCommitWriter, LoopBatcher, prepare
from audit.writer_process import ProcessWriter
from xgate.errors import ConfigError, InvalidInput, NotFound, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.audit")
DEFAULT_ORIGIN = "xgate.local/audit"
WriterKind = Literal["process", "thread", "none"]
_STATUS = "json_extract(CAST(data AS TEXT), '$.metadata.status')"  # request entries' HTTP status

__all__ = [
    "DEFAULT_ORIGIN",
    "MAX_PAGE",
    "AppendReceipt",
    "AuditLog",
    "AuditUnavailable",
    "Entry",
    "check_page",
    "connect",
    "filter_clause",
]


class AuditLog:
    """Append-only audit log. Thread-safe; use ``AuditLog.open`` and ``close`` (or ``with``)."""

    def __init__(
        self, path: Path, origin: str, signer: Signer | None, max_batch: int, linger: float, writer: WriterKind
    ) -> None:
        self.path = path
        self.origin = origin
        self.signer = signer
        conn = connect(path)
        lock_fd = -1
        try:
            conn.executescript(SCHEMA_SQL)
            self._check_meta(conn)
            if writer == "thread":
                lock_fd = acquire_writer_lock(path)  # the process writer's child takes it itself
            frontier = load_frontier(conn)  # refuses a database with missing tree nodes before anything starts
        except BaseException:
            conn.close()
            if lock_fd >= 0:
                os.close(lock_fd)
            raise
        self._writer: GroupCommitWriter | ProcessWriter | _NoWriter
        if writer == "process":
            conn.close()
            self._writer = ProcessWriter(path, max_batch, linger)
        elif writer == "none":
            conn.close()
            self._writer = _NoWriter(frontier.size)
        else:
            try:
                self._writer = GroupCommitWriter(conn, frontier, max_batch, linger, lock_fd=lock_fd)
            except BaseException:
                conn.close()
                os.close(lock_fd)
                raise
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBatcher] = weakref.WeakKeyDictionary()
        self._stop_timer = threading.Event()
        self._timer: threading.Thread | None = None
        # Called before every checkpoint is signed; raises to refuse (set by the log's owner).
        self.before_signing: Callable[[], None] | None = None

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
        writer: WriterKind = "thread",
    ) -> AuditLog:
        """Open (creating if needed) the log at ``path``; publish a checkpoint every interval seconds.

        ``writer="thread"`` commits on a thread of this process; ``"process"`` in a child process
        with the same guarantees, so commits and hashing run on another core than the producers
        (the gateway's choice: it appends several entries per request under load); ``"none"``
        reads a snapshot of the log as it is now (tools reading beside a running writer).
        """
        if signer is not None and signer.name != origin:
            raise ConfigError("the log signing key must be named after the log origin", origin=origin)
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            self = cls(p, origin, signer, max_batch, linger, writer)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open audit log '{p.name}'") from exc
        if checkpoint_interval is not None:
            self.start_checkpointing(checkpoint_interval)
        return self

    def _check_meta(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES('origin', ?), ('schema', 'xgate-audit-db/1')", (self.origin,))
        elif row[0] != self.origin:
            raise ConfigError("audit log origin does not match the database", expected=self.origin)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def append(self, record: AuditRecord | Mapping[str, Any]) -> AppendReceipt:
        """Durably append one record; blocks until committed. Raises InvalidInput for bad records."""
        return self._writer.appends([prepare(record)]).result()[0]

    async def append_async(self, record: AuditRecord | Mapping[str, Any]) -> AppendReceipt:
        """As ``append``, awaiting the commit without blocking the event loop.

        Appends made in one event-loop iteration travel to the writer together and come back in
        one thread-safe callback, so the loop and the writer hand over once per batch.
        """
        if self._writer.closed:
            raise ConfigError("audit log is closed")
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = LoopBatcher(self._writer, loop)
        return await batcher.add(prepare(record))

    def append_many(self, records: Iterable[AuditRecord | Mapping[str, Any]]) -> list[AppendReceipt]:
        """Append several records atomically (one transaction), in order."""
        pendings = [prepare(r) for r in records]
        if not pendings:
            return []
        return self._writer.appends(pendings).result()

    def ping(self, timeout: float = 2.0) -> None:
        """One round trip through the writer (thread or process) and an (empty) commit; raises when the
        writer is closed, lost or does not answer within `timeout` (the gateway's /readyz)."""
        if self._writer.closed:
            raise AuditUnavailable("the audit writer is closed")
        self._writer.execute([]).result(timeout)

    def close(self) -> None:
        if self._writer.closed:
            return
        self._stop_timer.set()
        if self._timer is not None:
            self._timer.join()
        self._writer.close()
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

        with self._checkpoint_lock:  # one publisher at a time: no duplicate checkpoints of one size
            if self.before_signing is not None:
                self.before_signing()  # e.g. the gateway's check of its history (audit/integrity.py)
            size = self.size
            reader = self._reader()
            row = reader.execute("SELECT id, note, size FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
            if row is not None and row[2] == size and not force:
                return with_cosignatures(reader, row)
            root = self.root(size)  # from stored nodes: every acknowledged entry is committed
            signed = signer.sign(Checkpoint(self.origin, size, root))
            sql = "INSERT INTO checkpoints(size, root, note, time_ms) VALUES(?,?,?,?)"
            self._writer.execute([(sql, (size, root, signed.text(), int(now_ms().timestamp() * 1000)))]).result()
        log.info("audit_checkpoint", origin=self.origin, size=size, root=root.hex())
        return signed

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

        sql = "INSERT OR REPLACE INTO cosignatures VALUES(?,?,?,?)"
        self._writer.execute([(sql, (row[0], sig.name, sig.text(), int(now_ms().timestamp() * 1000)))]).result()
        return self.checkpoint_at(size)

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        row = self._reader().execute("SELECT id, note FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else with_cosignatures(self._reader(), row)

    def checkpoint_at(self, size: int) -> SignedCheckpoint:
        row = (
            self._reader()
            .execute("SELECT id, note FROM checkpoints WHERE size=? ORDER BY id DESC LIMIT 1", (size,))
            .fetchone()
        )
        if row is None:
            raise NotFound("no checkpoint at that size", size=size)
        return with_cosignatures(self._reader(), row)

    def checkpoints(self, offset: int = 0, limit: int = 100) -> list[SignedCheckpoint]:
        rows = (
            self._reader()
            .execute(
                "SELECT id, note FROM checkpoints ORDER BY id DESC LIMIT ? OFFSET ?", (min(limit, MAX_PAGE), offset)
            )
            .fetchall()
        )
        return [with_cosignatures(self._reader(), r) for r in rows]

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
            if self._writer.closed:
                raise ConfigError("audit log is closed")
            conn = connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @property
    def size(self) -> int:
        """Number of committed entries."""
        return self._writer.size

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return merkle.root_from_nodes(size, fetch_nodes(self._reader()))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise NotFound("no entry at that index in a tree of that size", index=index, size=size)
        return merkle.inclusion_proof(index, size, fetch_nodes(self._reader()))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = self.size if new is None else new
        self._check_size(new)
        if not 0 < old <= new:
            raise InvalidInput("consistency proofs need 0 < old <= new", old=old, new=new)
        return merkle.consistency_proof(old, new, fetch_nodes(self._reader()))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise NotFound("tree size is beyond the log", size=size, log_size=self.size)

    def read_connection(self) -> sqlite3.Connection:
        """This thread's read connection to the log (for audit/read.py; closed with the log)."""
        return self._reader()

    def entry(self, index: int) -> Entry:
        sql = "SELECT idx, leaf_hash, data FROM entries WHERE idx=? AND idx<?"
        row = self._reader().execute(sql, (index, self.size)).fetchone()
        if row is None:
            raise NotFound("no audit entry at that index", index=index)
        return entry_from_row(row)

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
        status: int | None = None,
        refused: bool = False,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Entry]:
        """Entries matching every given filter, oldest first; ``until`` is exclusive.

        ``status``: `request` entries answered with that HTTP status; ``refused``: `request`
        entries answered 4xx (a refusal: bad input, no identity, policy, budget, size).
        """
        check_page(offset, limit)
        filters = {"agency": agency, "user": user, "program": program, "purpose": purpose, "decision": decision,
                   "subject": subject, "kind": kind, "request_id": request_id, "since": since, "until": until,
                   "status": status, "refused": refused}  # fmt: skip
        clause, args = filter_clause(self.size, filters)
        sql = f"SELECT idx, leaf_hash, data FROM entries WHERE {clause} ORDER BY idx LIMIT ? OFFSET ?"  # noqa: S608 (fixed column names)
        rows = self._reader().execute(sql, (*args, limit, offset)).fetchall()
        return [entry_from_row(r) for r in rows]


def check_page(offset: int, limit: int) -> None:
    if offset < 0 or not 0 < limit <= MAX_PAGE:
        raise InvalidInput(f"offset must be >= 0 and limit in 1..{MAX_PAGE}")


_COLUMNS = ("agency", "user", "program", "purpose", "decision", "kind")


def filter_clause(size: int, filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The SQL condition on ``entries`` for the officer's filters (audit.query.Filters' fields, plus
    ``text``: a substring of the stored record), within the first ``size`` entries.

    The one place filters become SQL: ``AuditLog.entries`` and the tamper-tolerant reads of
    audit/read.py both use it. Subject and request id use the lag-safe match of audit/index.py
    (the index below its mark, a scan of the entries above it), so nothing is missed while the
    index catches up. ``since`` is inclusive, ``until`` exclusive; ``status``/``refused`` select
    `request` entries answered with that HTTP status / with a 4xx.
    """
    where: list[str] = ["idx < ?"]
    args: list[Any] = [size]
    for col in _COLUMNS:
        if filters.get(col) is not None:
            where.append(f"{col} = ?")
            args.append(filters[col])
    for key, match in (("subject", index.SUBJECT_MATCH), ("request_id", index.REQUEST_MATCH)):
        if filters.get(key) is not None:
            where.append(match)
            args += [filters[key], filters[key]]
    for key, op in (("since", ">="), ("until", "<")):
        if filters.get(key) is not None:
            where.append(f"time_ms {op} ?")
            args.append(int(filters[key].timestamp() * 1000))
    if filters.get("status") is not None:
        where.append(f"kind = 'request' AND {_STATUS} = ?")
        args.append(filters["status"])
    if filters.get("refused"):
        where.append(f"kind = 'request' AND {_STATUS} BETWEEN 400 AND 499")
    if filters.get("text"):
        where.append("instr(CAST(data AS TEXT), ?) > 0")
        args.append(str(filters["text"]))
    return " AND ".join(where), args


class _NoWriter:
    """The writer of a log opened with ``writer="none"``: a fixed size, every write refused."""

    closed = False

    def __init__(self, size: int) -> None:
        self.size = size

    def appends(self, pendings: Any, gather: bool = True) -> Any:
        raise ConfigError("audit log opened read-only")

    execute = appends

    def close(self) -> None:
        self.closed = True
