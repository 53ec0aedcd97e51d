"""REST users in a database: what the users file is for one gateway, for any number of replicas.

In replicated mode (`[gateway] database`) every replica authenticates against the `api_users`
table of the shared database, so a user added (or disabled) once is known to every replica; an
answer is cached for a couple of seconds per key id (gateway/auth.py `Authenticator`). The users
file, if the config still names one, is imported at start: keys it has that the table has not are
added, keys it marks disabled are disabled; nothing the table disabled is ever re-enabled by it.
`xgate pki add-user --database URL` / `disable-user --database URL` write the table directly.

Only SHA-256 of each API key is stored, as in the file (gateway/auth.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway.auth import UserRecord, new_user
from xgate.db import Database, Migration, open_store
from xgate.errors import NotFound

_DDL = """
    CREATE TABLE IF NOT EXISTS api_users (
        key_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, agency TEXT NOT NULL, role TEXT NOT NULL,
        tier TEXT NOT NULL, key_sha256 TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS api_users_user ON api_users (user_id)
"""
USER_MIGRATIONS = (Migration("api_users", 1, sqlite=_DDL, postgresql=_DDL),)
_COLUMNS = "key_id, user_id, agency, role, tier, key_sha256, disabled, created_at"


class UserStore:
    def __init__(self, store: Path | str | Database) -> None:
        self.db: Database = open_store(store, USER_MIGRATIONS)

    def add(self, user: str, agency: str, role: str, tier: str) -> str:
        """Register a user; return the new API key (shown once). An existing user's keys are disabled."""
        api_key, rec = new_user(user, agency, role, tier)
        with self.db.transaction(lock=[f"user:{user}"]) as tx:
            tx.execute("UPDATE api_users SET disabled = 1 WHERE user_id = ?", (user,))
            tx.execute(f"INSERT INTO api_users ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _row(rec))  # noqa: S608
        return api_key

    def disable(self, user: str) -> int:
        with self.db.transaction(lock=[f"user:{user}"]) as tx:
            hits = tx.execute("UPDATE api_users SET disabled = 1 WHERE user_id = ? AND disabled = 0", (user,))
            count = int(hits.rowcount)
        if not count:
            raise NotFound(f"no active user '{user}'")
        return count

    def import_records(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Add the keys not yet known; disable those the records disable. Returns how many were added."""
        added = 0
        rows = [_row(r) for r in records]
        with self.db.transaction(lock=["api_users_import"]) as tx:
            for row in rows:
                cur = tx.execute(
                    f"INSERT INTO api_users ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
                    "ON CONFLICT (key_id) DO NOTHING",
                    row,
                )
                added += max(cur.rowcount, 0)
                if row[6]:
                    tx.execute("UPDATE api_users SET disabled = 1 WHERE key_id = ?", (row[0],))
        return added

    def lookup(self, key_id: str) -> UserRecord | None:
        with self.db.read() as tx:
            row = tx.execute(
                "SELECT user_id, agency, role, tier, key_id, key_sha256, disabled FROM api_users WHERE key_id = ?",
                (key_id,),
            ).fetchone()
        if row is None:
            return None
        return UserRecord(str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]), bool(row[6]))


def _row(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        str(rec["key_id"]),
        str(rec["user"]),
        str(rec["agency"]),
        str(rec["role"]),
        str(rec["tier"]),
        str(rec["key_sha256"]),
        1 if rec.get("disabled") else 0,
        str(rec.get("created_at", "")),
    )
