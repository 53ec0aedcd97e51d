"""Tampering with an audit database the way an attacker with file access would, for the tests that must catch it."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def truncate_log(db: Path, keep: int) -> None:
    """A careful cut to the first `keep` entries: entries, lookup rows, tree nodes and newer checkpoints go."""
    with sqlite3.connect(db) as conn:
        for stmt in (
            f"DELETE FROM entries WHERE idx >= {keep}",
            f"DELETE FROM entry_subjects WHERE idx >= {keep}",
            f"DELETE FROM entry_requests WHERE idx >= {keep}",
            f"UPDATE meta SET value='{keep}' WHERE key='indexed_upto'",
            f"DELETE FROM nodes WHERE ((idx + 1) << level) > {keep}",
            f"DELETE FROM cosignatures WHERE checkpoint_id IN (SELECT id FROM checkpoints WHERE size > {keep})",
            f"DELETE FROM checkpoints WHERE size > {keep}",
        ):
            conn.execute(stmt)


def truncated_copy(src: Path, dst: Path, keep: int) -> None:
    """A consistent copy of a live log (SQLite backup), then `truncate_log` on the copy."""
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as source, sqlite3.connect(dst) as target:
        source.backup(target)
    truncate_log(dst, keep)
