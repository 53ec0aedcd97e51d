"""Registered HE public contexts: a requester uploads its public context once, checks name it.

`POST /v1/contexts` validates the bytes (crypto.he.PublicContext: a TenSEAL BFV *public* context
with the federation's parameters, no secret key, no Galois keys, at most MAX_CONTEXT_BYTES) and
stores them under their fingerprint `sha256:<hex>` for the registering user (`agency/user`).
A check then carries `context_fingerprint` instead of ~0.66 MB of base64.

Bounds: each context is at most MAX_CONTEXT_BYTES; a user holds at most `max_per_owner`
contexts (registering one more drops that user's oldest); each expires `ttl_s` after its last
registration (registering it again renews it; expired rows are pruned). A fingerprint is only
usable by the user who registered it: another user's check naming it gets `context_unknown`
(404), exactly as for a fingerprint nobody registered.

Storage: a SQLite file (embedded default, `<state_dir>/contexts.sqlite`, schema applied at open)
or the replicas' shared database (PostgreSQL: `xgate gateway migrate` applies
CONTEXT_MIGRATIONS), so a context registered through one replica is found by every other. The
bytes of recently used contexts are also kept in memory (bounded), so a check reads one small row.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from crypto.he import MAX_CONTEXT_BYTES, PublicContext, parse_context_fingerprint
from xgate.db import Database, Migration, SqliteDatabase, open_store
from xgate.errors import ContextUnknown, PayloadTooLarge
from xgate.logging import get_logger

log = get_logger("xgate.gateway.contexts")

DEFAULT_TTL_S = 30 * 24 * 3600.0
DEFAULT_MAX_PER_OWNER = 8
MEMORY_CACHE = 32

CONTEXT_MIGRATIONS = (
    Migration(
        "contexts",
        1,
        sqlite="""
            CREATE TABLE IF NOT EXISTS he_contexts (
                owner TEXT NOT NULL, fingerprint TEXT NOT NULL, data BLOB NOT NULL,
                registered_at REAL NOT NULL, expires_at REAL NOT NULL,
                PRIMARY KEY (owner, fingerprint)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS he_contexts_expiry ON he_contexts (expires_at)
        """,
        postgresql="""
            CREATE TABLE IF NOT EXISTS he_contexts (
                owner TEXT NOT NULL, fingerprint TEXT NOT NULL, data BYTEA NOT NULL,
                registered_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (owner, fingerprint));
            CREATE INDEX IF NOT EXISTS he_contexts_expiry ON he_contexts (expires_at)
        """,
    ),
)


class ContextStore:
    """Public HE contexts per (owner, fingerprint), on SQLite or a shared database."""

    PRUNE_EVERY_S = 600.0

    def __init__(
        self,
        store: Path | str | Database,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_per_owner: int = DEFAULT_MAX_PER_OWNER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0 or max_per_owner < 1:
            raise ValueError("ttl_s must be positive and max_per_owner at least 1")
        self.db: Database = open_store(store, CONTEXT_MIGRATIONS)
        self.ttl_s = ttl_s
        self.max_per_owner = max_per_owner
        self._clock = clock
        self._pruned_at = 0.0
        self._lock = threading.Lock()
        self._bytes: OrderedDict[str, bytes] = OrderedDict()  # fingerprint -> context bytes

    def register(self, owner: str, data: bytes) -> tuple[str, float]:
        """Validate and store a public context for `owner`; returns (fingerprint, expires_at).

        Idempotent: the same bytes again renew the expiry. CryptoError (secret key, Galois keys,
        foreign parameters, malformed) and PayloadTooLarge are raised before anything is stored.
        """
        if len(data) > MAX_CONTEXT_BYTES:
            raise PayloadTooLarge(f"HE public context of {len(data)} bytes exceeds {MAX_CONTEXT_BYTES}")
        context = PublicContext.cached(data)  # validates; the check that follows reuses it
        now = self._clock()
        self._maybe_prune(now)
        expires = now + self.ttl_s
        with self.db.transaction(lock=[f"contexts/{owner}"]) as tx:
            renewed = tx.execute(
                "UPDATE he_contexts SET registered_at = ?, expires_at = ? WHERE owner = ? AND fingerprint = ?",
                (now, expires, owner, context.ref),
            ).rowcount
            if renewed != 1:
                tx.execute(
                    "INSERT INTO he_contexts (owner, fingerprint, data, registered_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (owner, context.ref, data, now, expires),
                )
            rows = tx.execute(
                "SELECT fingerprint FROM he_contexts WHERE owner = ? ORDER BY registered_at DESC, fingerprint",
                (owner,),
            ).fetchall()
            for (old,) in rows[self.max_per_owner :]:
                tx.execute("DELETE FROM he_contexts WHERE owner = ? AND fingerprint = ?", (owner, str(old)))
                log.info("context_evicted", context=str(old), reason="count")
        self._remember(context.ref, data)
        log.info("context_registered", context=context.ref, bytes=len(data), renewed=renewed == 1)
        return context.ref, expires

    def expires_at(self, owner: str, fingerprint: str) -> float:
        """When `owner`'s registration of this context expires; ContextUnknown if it has none."""
        parse_context_fingerprint(fingerprint)
        with self.db.read() as tx:
            row = tx.execute(
                "SELECT expires_at FROM he_contexts WHERE owner = ? AND fingerprint = ? AND expires_at > ?",
                (owner, fingerprint, self._clock()),
            ).fetchone()
        if row is None:
            raise _unknown(fingerprint)
        return float(row[0])

    def get(self, owner: str, fingerprint: str) -> bytes:
        """The context's bytes, for a check by `owner`; ContextUnknown if not registered (or expired)."""
        self.expires_at(owner, fingerprint)
        with self._lock:
            data = self._bytes.get(fingerprint)
            if data is not None:
                self._bytes.move_to_end(fingerprint)
                return data
        with self.db.read() as tx:
            row = tx.execute(
                "SELECT data FROM he_contexts WHERE owner = ? AND fingerprint = ?", (owner, fingerprint)
            ).fetchone()
        if row is None:  # expired and pruned in between
            raise _unknown(fingerprint)
        data = bytes(row[0])
        self._remember(fingerprint, data)
        return data

    def _remember(self, fingerprint: str, data: bytes) -> None:
        with self._lock:
            self._bytes[fingerprint] = data
            self._bytes.move_to_end(fingerprint)
            while len(self._bytes) > MEMORY_CACHE:
                self._bytes.popitem(last=False)

    def count(self, owner: str | None = None) -> int:
        with self.db.read() as tx:
            if owner is None:
                return int(tx.execute("SELECT COUNT(*) FROM he_contexts").fetchone()[0])
            return int(tx.execute("SELECT COUNT(*) FROM he_contexts WHERE owner = ?", (owner,)).fetchone()[0])

    def prune(self, now: float | None = None) -> int:
        at = self._clock() if now is None else now
        with self.db.transaction() as tx:
            removed = int(tx.execute("DELETE FROM he_contexts WHERE expires_at <= ?", (at,)).rowcount)
        self._pruned_at = at
        if removed:
            log.info("contexts_pruned", rows=removed)
        return removed

    def _maybe_prune(self, now: float) -> None:
        if now - self._pruned_at >= self.PRUNE_EVERY_S:
            self.prune(now)

    def close(self) -> None:
        """A store opened from a path owns its database; a shared `Database` is closed by its owner."""
        if isinstance(self.db, SqliteDatabase):
            self.db.close()


def _unknown(fingerprint: str) -> ContextUnknown:
    return ContextUnknown(
        "no HE context with this fingerprint is registered for you (or it expired): POST /v1/contexts",
        context_fingerprint=fingerprint,
    )
