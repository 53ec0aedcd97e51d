"""audit/read.py, the one read API: strict and tamper-tolerant pages, lag-safe lookups, the scan."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from audit import index
from audit.query import Filters
from audit.read import AuditReader, scan_entries
from audit.store import AuditLog
from audit.testing import ORIGIN, log_signer, pseudonym, record
from xgate.errors import IntegrityError


def _alter(path: Path, *indices: int) -> None:
    conn = sqlite3.connect(path)
    for i in indices:
        conn.execute(
            "UPDATE entries SET data = CAST(REPLACE(CAST(data AS TEXT), 'cw-', 'xx-') AS BLOB) WHERE idx=?", (i,)
        )
    conn.commit()
    conn.close()


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    with AuditLog.open(tmp_path / "a.db", signer=log_signer(), origin=ORIGIN) as opened:
        opened.append_many([record(i) for i in range(10)])
        yield opened


def test_tolerant_pages_mark_altered_rows_strict_pages_refuse_them(log: AuditLog) -> None:
    _alter(log.path, 3)
    reader = AuditReader(log)
    page = reader.page(Filters(), limit=5, newest_first=True, mode="tolerant")
    assert [e.index for e in page.entries] == [9, 8, 7, 6, 5] and page.total == 10
    page = reader.page(Filters(), limit=5, mode="tolerant")
    assert [e.problem() is None for e in page.entries] == [True, True, True, False, True]
    with pytest.raises(IntegrityError) as err:
        reader.page(Filters(), limit=5)
    assert err.value.details["index"] == 3
    assert [e.index for e in reader.page(Filters(), offset=4, limit=5).entries] == [4, 5, 6, 7, 8]  # 3 not in it
    with pytest.raises(IntegrityError):
        reader.entry(3)
    assert reader.entry(3, mode="tolerant")["server_verdict"]["status"] == "not_verified"


def test_text_and_subject_filters_share_the_store_sql_and_are_lag_safe(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index, "IDLE_S", 3600.0)  # the index stays behind the fresh entries
    first = log.size
    log.append_many([record(50), record(51)])
    reader = AuditReader(log)
    for i in (50, 51):
        found = reader.page(Filters(subject=pseudonym(i)), mode="tolerant").entries
        assert [e.index for e in found] == [first + i - 50]
        assert [e.index for e in log.entries(subject=pseudonym(i))] == [first + i - 50]
    assert reader.page(Filters(), text="req-00000051").total == 1


def test_scan_lists_every_altered_entry_with_progress(log: AuditLog) -> None:
    _alter(log.path, 1, 7, 8)
    steps = list(scan_entries(log.path, chunk=3))
    assert [(s.total, s.scanned) for s in steps] == [(10, 0), (10, 3), (10, 6), (10, 9), (10, 10)]
    assert [i for s in steps for i in s.altered] == [1, 7, 8]
