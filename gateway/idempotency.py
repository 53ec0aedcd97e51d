"""Idempotency keys for POST /v1/checks: a retried check is neither charged twice nor computed twice.

A client that retries a check (on this gateway or on another replica, after a connection error, a
timeout or a 502/503/504) sends the same `Idempotency-Key` header with the same body. Per
(authenticated user, key) the store keeps the request's digest and, once the check was answered,
the answer itself (the requester's own masked, encrypted result), for a limited time (TTL, 24 h by
default; expired rows are pruned). The semantics follow the IETF draft
httpapi-idempotency-key-header and Stripe's API:

* same key, same body, answered          -> the stored answer is replayed (`Idempotent-Replayed: true`);
                                            nothing is charged, computed or sent to a node again;
* same key, same body, still running     -> 409 `idempotency_in_progress` with Retry-After (on any
                                            replica: the claim is a row in the shared database);
  a claim past its `stale_at` is abandoned and taken over. `stale_at` is written by the claimant
  from its own bound (the longest its check may take, `stale_after_s`) on the database's clock,
  and compared with the database's clock, so replicas with other deadline settings or skewed
  clocks agree on it; the replica taking over releases the dead attempt's reservations (owned by
  the claim's token), and the charge is fenced: a check commits only while its claim is still
  held (`fence`), otherwise it releases and the winner's answer is replayed;
* same key, another body                 -> 422 `idempotency_key_reused`;
* the check failed (node down, refused, budget released) -> the claim is dropped, a retry recomputes.

Only answers are stored; an error answer is never replayed. The key itself is not stored: rows
and audit entries carry its SHA-256.

Storage: a SQLite file (embedded default, `<state_dir>/idempotency.sqlite`, schema applied at
open) or a shared `Database` (PostgreSQL, replicated mode: `xgate gateway migrate` applies
`IDEMPOTENCY_MIGRATIONS`). A claim runs in one transaction locked on its (user, key), so two
replicas claiming one key at once get exactly one winner.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xgate.db import Database, Migration, Tx, db_now, open_store
from xgate.errors import IdempotencyInProgress, IdempotencyKeyInvalid, IdempotencyKeyReused
from xgate.logging import get_logger

log = get_logger("xgate.gateway.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
DEFAULT_TTL_S = 24 * 3600.0

IDEMPOTENCY_MIGRATIONS = (
    Migration(
        "idempotency",
        1,
        sqlite="""
            CREATE TABLE IF NOT EXISTS idempotency_keys (
                owner TEXT NOT NULL, key_sha256 TEXT NOT NULL, request_sha256 TEXT NOT NULL,
                claim TEXT NOT NULL, claimed_at REAL NOT NULL, expires_at REAL NOT NULL,
                status INTEGER, response BLOB, answered_at REAL,
                PRIMARY KEY (owner, key_sha256)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at)
        """,
        postgresql="""
            CREATE TABLE IF NOT EXISTS idempotency_keys (
                owner TEXT NOT NULL, key_sha256 TEXT NOT NULL, request_sha256 TEXT NOT NULL,
                claim TEXT NOT NULL, claimed_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
                status INTEGER, response BYTEA, answered_at DOUBLE PRECISION,
                PRIMARY KEY (owner, key_sha256));
            CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at)
        """,
    ),
    # When the claim may be taken over, on the database's clock, as its claimant bounded it.
    Migration(
        "idempotency",
        2,
        sqlite="ALTER TABLE idempotency_keys ADD COLUMN stale_at REAL",
        postgresql="ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS stale_at DOUBLE PRECISION",
    ),
)
FENCE_S = 60.0  # a fenced claim is held this much longer, for the commit and storing the answer


def validate_key(key: str) -> str:
    """1..255 printable ASCII characters (space to tilde), else IdempotencyKeyInvalid (the key is not echoed)."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise IdempotencyKeyInvalid(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters long, got {len(key)}")
    if not all(" " <= ch <= "~" for ch in key):
        raise IdempotencyKeyInvalid(f"{HEADER} must be printable ASCII characters only")
    return key


def key_digest(key: str) -> str:
    """What rows, logs and audit entries carry instead of the key."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def request_digest(route: str, body: Mapping[str, Any]) -> str:
    """Canonical hash of a request: the route and its parsed body (key order and spacing do not matter)."""
    canonical = json.dumps([route, body], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Claim:
    """This request now owns the key: answer it, then `complete` (or `release` on failure)."""

    owner: str
    key_sha256: str
    token: str
    superseded: str = ""  # the token of a dead attempt this claim took over (its reservations' owner)


@dataclass(frozen=True)
class Replay:
    """The key's request was answered already: send this back as it was."""

    status: int
    body: bytes
    answered_at: float


class IdempotencyStore:
    """Claims and stored answers per (owner, idempotency key), on SQLite or a shared database."""

    PRUNE_EVERY_S = 600.0

    def __init__(
        self,
        store: Path | str | Database,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        stale_after_s: float = 120.0,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``stale_after_s``: this replica's bound on how long its checks may run (the check
        deadline plus combining): its claims record `stale_at` = now + this, after which they are
        considered abandoned by a dead process and may be taken over. ``clock``: the database's
        clock unless given (tests)."""
        if ttl_s <= 0 or stale_after_s <= 0:
            raise ValueError("ttl_s and stale_after_s must be positive")
        self.db: Database = open_store(store, IDEMPOTENCY_MIGRATIONS)
        self.ttl_s = ttl_s
        self.stale_after_s = stale_after_s
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._pruned_at = float("-inf")

    def _now(self, tx: Tx) -> float:
        return self._clock() if self._clock is not None else db_now(tx)

    def begin(self, owner: str, key: str, request_sha256: str) -> Claim | Replay:
        """Claim the key for this request, or say it was answered (Replay), or refuse.

        Raises IdempotencyKeyReused (another body under this key), IdempotencyInProgress (the
        key's request is still running, here or on another replica), IdempotencyKeyInvalid."""
        digest = key_digest(validate_key(key))
        self._maybe_prune()
        token = secrets.token_hex(16)
        busy: IdempotencyInProgress | None = None  # raised once the transaction committed its stamp
        with self.db.transaction(lock=[f"idempotency/{owner}/{digest}"]) as tx:
            now = self._now(tx)
            row = tx.execute(
                "SELECT request_sha256, claimed_at, expires_at, status, response, answered_at, stale_at, claim"
                " FROM idempotency_keys WHERE owner = ? AND key_sha256 = ?",
                (owner, digest),
            ).fetchone()
            if row is not None and float(row[2]) <= now:  # expired: the key is free again
                tx.execute("DELETE FROM idempotency_keys WHERE owner = ? AND key_sha256 = ?", (owner, digest))
                row = None
            if row is None:
                tx.execute(
                    "INSERT INTO idempotency_keys (owner, key_sha256, request_sha256, claim, claimed_at, expires_at,"
                    " stale_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (owner, digest, request_sha256, token, now, now + self.ttl_s, now + self.stale_after_s),
                )
                return Claim(owner, digest, token)
            if str(row[0]) != request_sha256:
                raise IdempotencyKeyReused(
                    f"this {HEADER} was already used for a different request: use a fresh key for a new check",
                    key_sha256=digest,
                )
            if row[3] is not None:
                return Replay(int(row[3]), bytes(row[4]), float(row[5]))
            age = now - float(row[1])
            stale_at = float(row[6]) if row[6] is not None else None
            if stale_at is None:
                # A claim of an earlier version, stamped with its replica's own clock, which the
                # database's must not be compared with (a replica running behind would lose a live
                # claim at once): its staleness starts now, on the database's clock.
                stale_at = now + self.stale_after_s
                tx.execute(
                    "UPDATE idempotency_keys SET stale_at = ? WHERE owner = ? AND key_sha256 = ?",
                    (stale_at, owner, digest),
                )
            if now < stale_at:
                busy = IdempotencyInProgress(
                    f"a request with this {HEADER} is still being answered: retry later",
                    retry_after_s=min(self.retry_after_s, stale_at - now),
                    key_sha256=digest,
                )
            else:
                # Abandoned (its process died mid-check): take it over; the caller releases what the
                # dead attempt still holds (`Claim.superseded`).
                tx.execute(
                    "UPDATE idempotency_keys SET claim = ?, claimed_at = ?, expires_at = ?, stale_at = ?"
                    " WHERE owner = ? AND key_sha256 = ?",
                    (token, now, now + self.ttl_s, now + self.stale_after_s, owner, digest),
                )
                log.warning("idempotency_claim_taken_over", key_sha256=digest, age_s=round(age, 1))
                return Claim(owner, digest, token, superseded=str(row[7]))
        raise busy

    def fence(self, claim: Claim) -> None:
        """Right before a check is charged: raise IdempotencyInProgress unless this claim is still
        held (not taken over, not answered), and hold it FENCE_S longer so nobody takes it over
        while the charge is committed and the answer stored (one lock: a takeover is either
        before this, and refused here, or after the claim was renewed, and refused there)."""
        with self.db.transaction(lock=[f"idempotency/{claim.owner}/{claim.key_sha256}"]) as tx:
            until = self._now(tx) + FENCE_S
            held: int = tx.execute(
                "UPDATE idempotency_keys SET stale_at = CASE WHEN stale_at > ? THEN stale_at ELSE ? END"
                " WHERE owner = ? AND key_sha256 = ? AND claim = ? AND status IS NULL",
                (until, until, claim.owner, claim.key_sha256, claim.token),
            ).rowcount
        if held != 1:
            log.warning("idempotency_claim_lost", key_sha256=claim.key_sha256)
            raise IdempotencyInProgress(
                f"another attempt with this {HEADER} took the check over: retry to get its answer",
                retry_after_s=self.retry_after_s,
                key_sha256=claim.key_sha256,
            )

    def replay(self, owner: str, key_sha256: str, request_sha256: str) -> Replay | None:
        """The stored answer of a key (the attempt that won it), or None while there is none."""
        with self.db.read() as tx:
            row = tx.execute(
                "SELECT status, response, answered_at FROM idempotency_keys"
                " WHERE owner = ? AND key_sha256 = ? AND request_sha256 = ? AND status IS NOT NULL",
                (owner, key_sha256, request_sha256),
            ).fetchone()
        return Replay(int(row[0]), bytes(row[1]), float(row[2])) if row is not None else None

    def complete(self, claim: Claim, status: int, body: bytes) -> bool:
        """Store the answer under the claim. False if the claim was lost (taken over meanwhile)."""
        with self.db.transaction(lock=[f"idempotency/{claim.owner}/{claim.key_sha256}"]) as tx:
            now = self._now(tx)
            done: int = tx.execute(
                "UPDATE idempotency_keys SET status = ?, response = ?, answered_at = ?, expires_at = ?"
                " WHERE owner = ? AND key_sha256 = ? AND claim = ? AND status IS NULL",
                (status, body, now, now + self.ttl_s, claim.owner, claim.key_sha256, claim.token),
            ).rowcount
        if done != 1:
            log.warning("idempotency_claim_lost", key_sha256=claim.key_sha256)
        return done == 1

    def release(self, claim: Claim) -> bool:
        """Drop an unanswered claim (the check failed): a retry with the key computes afresh."""
        with self.db.transaction(lock=[f"idempotency/{claim.owner}/{claim.key_sha256}"]) as tx:
            done: int = tx.execute(
                "DELETE FROM idempotency_keys WHERE owner = ? AND key_sha256 = ? AND claim = ? AND status IS NULL",
                (claim.owner, claim.key_sha256, claim.token),
            ).rowcount
        return done == 1

    def prune(self, now: float | None = None) -> int:
        """Delete every expired row (answers older than the TTL, long-abandoned claims)."""
        with self.db.transaction() as tx:
            at = self._now(tx) if now is None else now
            removed = int(tx.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (at,)).rowcount)
        self._pruned_at = time.monotonic() if self._clock is None else at
        if removed:
            log.info("idempotency_pruned", rows=removed)
        return removed

    def count(self) -> int:
        with self.db.read() as tx:
            return int(tx.execute("SELECT COUNT(*) FROM idempotency_keys").fetchone()[0])

    def _maybe_prune(self) -> None:
        since = time.monotonic() if self._clock is None else self._clock()
        if since - self._pruned_at >= self.PRUNE_EVERY_S:
            self.prune()

    def close(self) -> None:
        """A store opened from a path owns its database; a shared `Database` is closed by its owner."""
