"""Tamper-tolerant reads of the audit log: every stored row, each marked intact or altered.

`AuditLog.entries()` refuses a page as soon as one stored entry fails its leaf hash, which is
right for evidence but leaves an officer blind exactly when something is wrong. These reads take
raw rows (read-only), show every row and mark each one; lookups by subject and request id use
the same lag-safe match as `AuditLog.entries` (audit/index.py: the index below its mark, a scan
above it), so an entry the index has not caught up with is still found.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from audit import index, merkle
from audit.db import MAX_PAGE
from audit.records import AuditRecord
from xgate.errors import InvalidInput, NotFound

COLUMN_FILTERS = ("agency", "user", "program", "purpose", "decision", "kind")
COUNT_CAP = 100_000  # counting beyond this is not worth a full index scan per page


@dataclass(frozen=True)
class RawEntry:
    index: int
    leaf_hash: bytes
    data: bytes

    @property
    def leaf_ok(self) -> bool:
        return merkle.leaf_hash(self.data) == self.leaf_hash

    def problem(self) -> str | None:
        """Why this stored entry cannot be trusted, or None when it is intact."""
        if not self.leaf_ok:
            return "entry data does not match its stored leaf hash (altered)"
        try:
            AuditRecord.parse(self.data)
        except InvalidInput:
            return "entry data is not a valid canonical record"
        return None

    def readable(self) -> dict[str, Any] | None:
        """The record as stored (even when altered, so the officer sees what changed)."""
        try:
            value = json.loads(self.data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def view(self, *, with_data: bool = False) -> dict[str, Any]:
        problem = self.problem()
        out: dict[str, Any] = {
            "index": self.index,
            "leaf_hash": self.leaf_hash.hex(),
            "intact": problem is None,
            "problem": problem,
            "record": self.readable(),
        }
        if with_data:
            out["data_b64"] = base64.b64encode(self.data).decode()
        return out


def _where(size: int, filters: dict[str, Any]) -> tuple[str, list[Any]]:
    where: list[str] = ["idx < ?"]
    args: list[Any] = [size]
    for col in COLUMN_FILTERS:
        if filters.get(col) is not None:
            where.append(f"{col} = ?")
            args.append(filters[col])
    if filters.get("request_id") is not None:
        where.append(index.REQUEST_MATCH)  # lag-safe, as the subject
        args += [filters["request_id"], filters["request_id"]]
    if filters.get("subject") is not None:
        where.append(index.SUBJECT_MATCH)  # lag-safe: the index below its mark, a scan above it
        args += [filters["subject"], filters["subject"]]
    if filters.get("since") is not None:
        where.append("time_ms >= ?")
        args.append(int(filters["since"].timestamp() * 1000))
    if filters.get("until") is not None:
        where.append("time_ms < ?")
        args.append(int(filters["until"].timestamp() * 1000))
    if filters.get("q"):
        where.append("instr(CAST(data AS TEXT), ?) > 0")
        args.append(str(filters["q"]))
    return " AND ".join(where), args


def query(
    conn: sqlite3.Connection, size: int, filters: dict[str, Any], *, offset: int, limit: int, newest_first: bool
) -> tuple[list[RawEntry], int]:
    """One page of raw entries matching the filters, and how many match (capped at COUNT_CAP)."""
    if offset < 0 or not 0 < limit <= MAX_PAGE:
        raise InvalidInput(f"offset must be >= 0 and limit in 1..{MAX_PAGE}")
    clause, args = _where(size, filters)
    order = "DESC" if newest_first else "ASC"
    sql = f"SELECT idx, leaf_hash, data FROM entries WHERE {clause} ORDER BY idx {order} LIMIT ? OFFSET ?"  # noqa: S608 (fixed column names)
    rows = conn.execute(sql, (*args, limit, offset)).fetchall()
    count_sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM entries WHERE {clause} LIMIT ?)"  # noqa: S608
    total = int(conn.execute(count_sql, (*args, COUNT_CAP)).fetchone()[0])
    return [RawEntry(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows], total


def raw_entry(conn: sqlite3.Connection, size: int, index: int) -> RawEntry:
    row = conn.execute("SELECT idx, leaf_hash, data FROM entries WHERE idx=? AND idx<?", (index, size)).fetchone()
    if row is None:
        raise NotFound("no audit entry at that index", index=index)
    return RawEntry(int(row[0]), bytes(row[1]), bytes(row[2]))
