"""The lookup index by subject pseudonym and request id, kept off the durable append path.

Both keys are random (pseudonyms, UUID request ids), so indexing them inside each group commit
wrote one scattered B-tree page per entry to the WAL and made the commit, which every waiting
appender pays for, 2-3x slower, growing with the log. The index is derived data: every pseudonym
and request id is also in the entry itself, which is what is durable and hashed into the tree.

So the writer commits entries alone and indexes them later, in batches (``IndexBacklog``), and
records how far the index reaches in ``meta.indexed_upto`` in the same transaction. A reader's
lookup takes the index below that mark and scans the few entries above it, in one statement and
so one snapshot: answers are complete whatever the index's lag. After a crash the lost backlog is
rebuilt from the entries (``catch_up``), and ``verify_log`` checks the index against them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from xgate.errors import IntegrityError

UPTO_KEY = "indexed_upto"  # spelled out in the SQL below
# Index when this many lookup rows wait, or when the writer has had nothing to do for IDLE_S.
BACKLOG_ROWS = 8192
IDLE_S = 0.05

# Entries holding a pseudonym / request id (bind the key twice): index below the mark, scan above it.
SUBJECT_MATCH = (
    "idx IN (SELECT idx FROM entry_subjects WHERE pseudonym = ? UNION ALL "
    "SELECT idx FROM entries WHERE idx >= COALESCE("
    "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'indexed_upto'), 0) AND EXISTS "
    "(SELECT 1 FROM json_each(CAST(data AS TEXT), '$.subjects') WHERE value = ?))"
)
REQUEST_MATCH = (
    "idx IN (SELECT idx FROM entry_requests WHERE request_id = ? UNION ALL "
    "SELECT idx FROM entries WHERE idx >= COALESCE("
    "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'indexed_upto'), 0) AND request_id = ?)"
)

Row = tuple[str, int]


def rows_for(idx: int, subjects: Iterable[str], request_id: str | None) -> tuple[list[Row], list[Row]]:
    """The (pseudonym, idx) and (request_id, idx) lookup rows of one entry."""
    return [(s, idx) for s in subjects], ([] if request_id is None else [(request_id, idx)])


class IndexBacklog:
    """Lookup rows of committed entries not yet indexed; flushed by the writer in one transaction."""

    def __init__(self, upto: int) -> None:
        self.upto = upto  # every entry below is indexed
        self.end = upto  # every entry below is indexed or in the backlog
        self.subjects: list[Row] = []
        self.requests: list[Row] = []

    @property
    def pending_rows(self) -> int:
        return len(self.subjects) + len(self.requests)

    def add(self, subjects: list[Row], requests: list[Row], end: int) -> None:
        self.subjects.extend(subjects)
        self.requests.extend(requests)
        self.end = end

    def flush(self, conn: sqlite3.Connection, insert: Any) -> None:
        """Index the backlog (``insert(conn, table, width, rows)``) and move the mark, atomically."""
        if self.end == self.upto:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Sorted: the B-tree pages are visited in order, each once per flush.
            insert(conn, "entry_subjects", 2, sorted(self.subjects))
            insert(conn, "entry_requests", 2, sorted(self.requests))
            conn.execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (UPTO_KEY, str(self.end)))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.upto = self.end
        self.subjects, self.requests = [], []


def read_upto(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (UPTO_KEY,)).fetchone()
    return None if row is None else int(row[0])


def catch_up(conn: sqlite3.Connection, size: int, insert: Any) -> IndexBacklog:
    """Bring the index up to ``size`` entries (after a crash or an upgrade); returns the backlog.

    A log written before the index moved here has every subject indexed and request ids only in
    an index on ``entries``: those move to ``entry_requests`` once.
    """
    upto = read_upto(conn)
    if upto is None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DROP INDEX IF EXISTS entries_request")
        conn.execute("DELETE FROM entry_requests")
        conn.execute("INSERT INTO entry_requests SELECT request_id, idx FROM entries WHERE request_id IS NOT NULL")
        conn.execute("INSERT INTO meta VALUES(?, ?)", (UPTO_KEY, str(size)))
        conn.execute("COMMIT")
        upto = size
    if upto > size:
        raise IntegrityError("the audit index reaches beyond the entries; run `xgate audit verify-log`")
    backlog = IndexBacklog(upto)
    sql = "SELECT idx, data, request_id FROM entries WHERE idx >= ? ORDER BY idx"
    for idx, data, request_id in conn.execute(sql, (upto,)).fetchall():
        subjects, requests = rows_for(idx, subjects_of(bytes(data)), request_id)
        backlog.add(subjects, requests, idx + 1)
    backlog.flush(conn, insert)
    return backlog


def subjects_of(data: bytes) -> list[str]:
    """The distinct pseudonyms of a stored entry (the writer indexes each once)."""
    try:
        subjects = json.loads(data).get("subjects", [])
    except (ValueError, AttributeError):
        raise IntegrityError("an audit entry is not a JSON record; run `xgate audit verify-log`") from None
    return list(dict.fromkeys(str(s) for s in subjects))


def indexed_rows(conn: sqlite3.Connection, table: str) -> Iterator[tuple[int, str]]:
    """(idx, key) rows of one lookup table in entry order, for verification."""
    key = "pseudonym" if table == "entry_subjects" else "request_id"
    return iter(conn.execute(f"SELECT idx, {key} FROM {table} ORDER BY idx, {key}"))  # noqa: S608 (fixed names)
