"""The lookup index by pseudonym and request id trails the appends (audit/index.py): lookups must
be complete wherever its mark stands, a lost backlog is rebuilt on open, and old logs migrate."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from audit import index
from audit.store import AuditLog
from audit.testing import ORIGIN, log_signer, pseudonym, record
from audit.verify import verify_log
from xgate.errors import IntegrityError

N = 30


def _records() -> list[Any]:
    # Entry i names pseudonyms i % 7 and i % 5 (so each pseudonym is in several entries) and
    # request i % 4; entry 0 has no subjects at all.
    out = []
    for i in range(N):
        subjects = () if i == 0 else tuple({pseudonym(i % 7), pseudonym(100 + i % 5)})
        out.append(record(i, request_id=f"req-{i % 4}", subjects=subjects))
    return out


def _expected(recs: list[Any], *, subject: str | None = None, request_id: str | None = None) -> list[int]:
    return [
        i
        for i, r in enumerate(recs)
        if (subject is None or subject in r.subjects) and (request_id is None or r.request_id == request_id)
    ]


def _lookups(log: AuditLog, recs: list[Any]) -> None:
    for s in {s for r in recs for s in r.subjects}:
        assert [e.index for e in log.entries(subject=s, limit=1000)] == _expected(recs, subject=s)
    for q in ("req-0", "req-1", "req-2", "req-3"):
        assert [e.index for e in log.entries(request_id=q, limit=1000)] == _expected(recs, request_id=q)
        got = [e.index for e in log.entries(request_id=q, subject=pseudonym(3), limit=1000)]
        assert got == _expected(recs, request_id=q, subject=pseudonym(3))
    assert log.entries(subject=pseudonym(999)) == []
    assert log.entries(request_id="req-none") == []


def _upto(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        value = index.read_upto(conn)
    finally:
        conn.close()
    assert value is not None
    return value


def _sql(path: Path, *stmts: str) -> None:
    conn = sqlite3.connect(path)
    for s in stmts:
        conn.execute(s)
    conn.commit()
    conn.close()


def test_lookups_find_entries_the_index_has_not_reached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "IDLE_S", 3600.0)  # the writer never idles long enough to index
    recs = _records()
    with AuditLog.open(tmp_path / "a.db", origin=ORIGIN) as log:
        log.append_many(recs[:10])
        log.append_many(recs[10:])
        assert _upto(tmp_path / "a.db") == 0  # nothing indexed yet: every lookup scans
        _lookups(log, recs)


def test_the_writer_indexes_when_appends_pause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "IDLE_S", 0.01)
    recs = _records()
    with AuditLog.open(tmp_path / "a.db", origin=ORIGIN) as log:
        log.append_many(recs)
        deadline = time.monotonic() + 30
        while _upto(tmp_path / "a.db") < N and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _upto(tmp_path / "a.db") == N
        _lookups(log, recs)


def test_the_writer_indexes_when_the_backlog_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "IDLE_S", 3600.0)
    monkeypatch.setattr(index, "BACKLOG_ROWS", 10)
    recs = _records()
    with AuditLog.open(tmp_path / "a.db", origin=ORIGIN) as log:
        for r in recs:
            log.append(r)
        assert 0 < _upto(tmp_path / "a.db") <= N
        _lookups(log, recs)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_close_indexes_everything(tmp_path: Path, writer: Any) -> None:
    recs = _records()
    with AuditLog.open(tmp_path / "a.db", origin=ORIGIN, writer=writer) as log:
        log.append_many(recs)
        _lookups(log, recs)
    assert _upto(tmp_path / "a.db") == N


@pytest.mark.parametrize("mark", [0, 1, 13, N - 1])
def test_a_lost_backlog_is_rebuilt_on_open(tmp_path: Path, mark: int) -> None:
    # A crash loses the backlog: index rows stop at some entry and the mark with them.
    signer = log_signer()
    recs = _records()
    path = tmp_path / "a.db"
    with AuditLog.open(path, origin=ORIGIN, signer=signer) as log:
        log.append_many(recs)
        log.publish_checkpoint()
    _sql(
        path,
        f"DELETE FROM entry_subjects WHERE idx >= {mark}",
        f"DELETE FROM entry_requests WHERE idx >= {mark}",
        f"UPDATE meta SET value='{mark}' WHERE key='indexed_upto'",
    )
    verify_log(path, signer._key.public_key())  # a trailing index is consistent, not tampering
    with AuditLog.open(path, origin=ORIGIN, writer="none") as snapshot:
        _lookups(snapshot, recs)  # a read-only reader scans what is not indexed
    with AuditLog.open(path, origin=ORIGIN) as log:
        assert _upto(path) == N
        _lookups(log, recs)
    assert verify_log(path, signer._key.public_key()).size == N


def test_a_log_from_before_the_index_moved_is_migrated(tmp_path: Path) -> None:
    signer = log_signer()
    recs = _records()
    path = tmp_path / "a.db"
    with AuditLog.open(path, origin=ORIGIN, signer=signer) as log:
        log.append_many(recs)
    # The earlier layout: subjects indexed with each entry, request ids in an index on entries.
    _sql(
        path,
        "DELETE FROM entry_requests",
        "DELETE FROM meta WHERE key='indexed_upto'",
        "CREATE INDEX entries_request ON entries(request_id) WHERE request_id IS NOT NULL",
    )
    verify_log(path, signer._key.public_key())
    with AuditLog.open(path, origin=ORIGIN) as log:
        _lookups(log, recs)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name='entries_request'").fetchone() is None
    conn.close()
    assert _upto(path) == N


def test_an_index_mark_beyond_the_entries_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AuditLog.open(path, origin=ORIGIN) as log:
        log.append_many(_records())
    _sql(path, f"UPDATE meta SET value='{N + 5}' WHERE key='indexed_upto'")
    with pytest.raises(IntegrityError, match="index reaches beyond"):
        AuditLog.open(path, origin=ORIGIN)
