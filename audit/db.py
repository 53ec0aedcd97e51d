"""The audit log's SQLite layout and the row-level helpers its writer and readers share.

Leaves live in ``entries`` (with the columns officers filter on), every completed subtree hash in
``nodes``, the lookup index by pseudonym and request id in ``entry_subjects`` and ``entry_requests``
(maintained behind the appends, see audit/index.py); checkpoints and their cosignatures beside them.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import merkle
from audit.checkpoints import SignedCheckpoint, add_cosignature, parse_signed_note
from audit.records import AuditRecord
from xgate.errors import ConfigError, IntegrityError, InvalidInput

MAX_PAGE = 1000

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries(
  idx INTEGER PRIMARY KEY, leaf_hash BLOB NOT NULL, data BLOB NOT NULL,
  kind TEXT NOT NULL, time_ms INTEGER NOT NULL, user TEXT NOT NULL, agency TEXT NOT NULL,
  program TEXT, purpose TEXT, decision TEXT, request_id TEXT);
CREATE INDEX IF NOT EXISTS entries_user ON entries(user, idx);
CREATE INDEX IF NOT EXISTS entries_agency ON entries(agency, idx);
CREATE INDEX IF NOT EXISTS entries_time ON entries(time_ms);
CREATE TABLE IF NOT EXISTS entry_subjects(pseudonym TEXT NOT NULL, idx INTEGER NOT NULL,
  PRIMARY KEY(pseudonym, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entry_requests(request_id TEXT NOT NULL, idx INTEGER NOT NULL,
  PRIMARY KEY(request_id, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes(level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
  PRIMARY KEY(level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints(id INTEGER PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL,
  note TEXT NOT NULL, time_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cosignatures(checkpoint_id INTEGER NOT NULL, witness TEXT NOT NULL,
  line TEXT NOT NULL, time_ms INTEGER NOT NULL, PRIMARY KEY(checkpoint_id, witness));
"""


@dataclass(frozen=True)
class Entry:
    index: int
    leaf_hash: bytes
    data: bytes
    record: AuditRecord


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it is acknowledged
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def acquire_writer_lock(path: Path, wait_s: float = 10.0) -> int:
    """Take the log's single-writer lock (``<db>.writer.lock``, flock); returns the fd holding it.

    Two writers would each extend their own idea of the tree. A writer that just died (SIGKILL of
    the gateway while its writer process finishes its last batch) releases the lock within moments,
    so we wait up to ``wait_s`` before refusing.
    """
    fd = os.open(f"{path}.writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ConfigError("another process is writing this audit log") from None
            time.sleep(0.05)


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


def load_frontier(conn: sqlite3.Connection) -> merkle.Frontier:
    """The tree's right edge from stored nodes; refuses a database whose nodes are missing."""
    size = int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0])
    ids = merkle.Frontier.node_ids(size)
    got = fetch_nodes(conn)(ids)
    if len(got) != len(ids):
        raise IntegrityError("audit log tree nodes are missing; run `xgate audit verify-log`")
    return merkle.Frontier(size, [got[i] for i in ids])


def entry_from_row(row: tuple[int, bytes, bytes]) -> Entry:
    """Parse a stored row, re-checking its leaf hash and canonical form (storage is not trusted)."""
    idx, leaf, data = row[0], bytes(row[1]), bytes(row[2])
    if merkle.leaf_hash(data) != leaf:
        raise IntegrityError("stored audit entry does not match its leaf hash", index=idx)
    try:
        record = AuditRecord.parse(data)
    except InvalidInput as exc:
        raise IntegrityError("stored audit entry is not a valid record", index=idx) from exc
    return Entry(idx, leaf, data, record)


def with_cosignatures(conn: sqlite3.Connection, row: tuple[Any, ...]) -> SignedCheckpoint:
    """A stored checkpoint row (id, note, ...) with every stored witness cosignature attached."""
    signed = parse_signed_note(row[1])
    lines = conn.execute("SELECT line FROM cosignatures WHERE checkpoint_id=? ORDER BY witness", (row[0],))
    for (line,) in lines.fetchall():
        signed = add_cosignature(signed, line)
    return signed
