"""The federation manifest's storage: which gateway logs exist and the latest checkpoint of each.

Every gateway registers its audit log (origin, replica name, log public key) at start and records
each checkpoint it publishes (with the witnesses' cosignatures), in the state store the replicas
share (PostgreSQL; a SQLite file in the embedded mode). `GET /v1/audit/federation` serves it as
an `xgate-audit-federation/1` document that `xgate audit verify-federation` checks the replicas'
logs against (audit/federation.py).

Registration refuses a second log under one origin with another key, and one key for two
origins: to the witnesses, a log is its key and origin, and two writers of one log would fork it.
Two processes configured alike (one origin, one key, two audit databases) pass registration; the
gateway then finds the fork against the checkpoint recorded here (gateway/audit.py
`check_against_manifest`), at start and before recording each of its own.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from audit.checkpoints import EccKey, raw_public
from audit.federation import ManifestLog, manifest_document
from xgate.db import Database, Migration, open_store
from xgate.errors import ConfigError

_DDL = """
    CREATE TABLE IF NOT EXISTS audit_logs (
        origin TEXT PRIMARY KEY, replica TEXT NOT NULL, public_key BYTEA NOT NULL,
        registered_ms BIGINT NOT NULL, checkpoint_size BIGINT, checkpoint TEXT)
"""
AUDIT_REGISTRY_MIGRATIONS = (Migration("audit_federation", 1, sqlite=_DDL.replace("BYTEA", "BLOB"), postgresql=_DDL),)


class AuditLogRegistry:
    def __init__(self, store: Path | str | Database) -> None:
        self.db: Database = open_store(store, AUDIT_REGISTRY_MIGRATIONS)

    def register(self, origin: str, replica: str, key: EccKey) -> None:
        """Record this log, or confirm it is the one registered under its origin (ConfigError if not)."""
        public = raw_public(key)
        with self.db.transaction(lock=["audit_logs"]) as tx:
            row = tx.execute("SELECT public_key FROM audit_logs WHERE origin = ?", (origin,)).fetchone()
            if row is not None:
                if bytes(row[0]) != public:
                    raise ConfigError(
                        f"audit log '{origin}' is registered with another signing key: "
                        "give this replica its own [gateway] replica name and audit_key"
                    )
                return
            other = tx.execute("SELECT origin FROM audit_logs WHERE public_key = ?", (public,)).fetchone()
            if other is not None:
                raise ConfigError(
                    f"this audit_key already signs the log '{other[0]}': every replica needs its own audit_key"
                )
            tx.execute(
                "INSERT INTO audit_logs (origin, replica, public_key, registered_ms) VALUES (?, ?, ?, ?)",
                (origin, replica, public, int(time.time() * 1000)),
            )

    def record_checkpoint(self, origin: str, size: int, note: str) -> None:
        """The latest checkpoint of a log (never replaced by a smaller one)."""
        with self.db.transaction(lock=["audit_logs"]) as tx:
            tx.execute(
                "UPDATE audit_logs SET checkpoint_size = ?, checkpoint = ? "
                "WHERE origin = ? AND (checkpoint_size IS NULL OR checkpoint_size <= ?)",
                (size, note, origin, size),
            )

    def checkpoint(self, origin: str) -> str | None:
        """The latest checkpoint note recorded for a log, if any."""
        with self.db.read() as tx:
            row = tx.execute("SELECT checkpoint FROM audit_logs WHERE origin = ?", (origin,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def logs(self) -> list[ManifestLog]:
        with self.db.read() as tx:
            rows = tx.execute("SELECT origin, replica, public_key, checkpoint FROM audit_logs ORDER BY origin")
            return [
                ManifestLog(str(o), str(r), bytes(k), None if c is None else str(c)) for o, r, k, c in rows.fetchall()
            ]

    def manifest(self) -> dict[str, Any]:
        return manifest_document(self.logs())
