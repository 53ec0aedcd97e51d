"""Silver claims: a person's silver result from one program bars the programs that share a
question with it, per requesting agency, for a window of days.

The silver (overall) view tells a requester a subject's verdict and how many criteria failed, not
which. Two programs that share a question break that when both answer for one subject: 低保 fails
one criterion and target discovery (income and residence too, plus enrolment) fails none, so
the failure was the registered business, whatever the masks hide. So a silver check claims each
of its subjects for its program, and a check of a program that overlaps it (policies/programs.py
`overlap_groups`: linked by shared questions) is refused for a subject claimed within the window
(`silver_claim_days` in policies/settings.toml [tiers], a year by default). A claim names the
program and a digest of the questions it asks (`Program.claim_identity`), so a new version of the
same program asking other questions is refused too; conflicts are found by the overlapping
programs' ids, not by a group name, so adding a program to a group keeps the old claims in force.
Repeats of the same program are answered (they return the same masked values in an epoch) and
renew the claim.

Claims are reserved like the probing budget: committed when the check is answered, released
when it fails. A claim carries a lease by the database's clock (longer than any check may take):
one never settled (the gateway died mid-check) is dropped once its lease runs out, by the next
reservation, and its commit then fails (the check refuses to answer).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from policies.leases import LeasedReservations
from policies.types import DEFAULT_LEASE_S, RESERVATION_OWNER
from xgate.db import Database, Migration, lease_migration, open_store
from xgate.errors import InvalidInput, PolicyDenied, StoreUnavailable
from xgate.logging import get_logger

log = get_logger("xgate.policies.silver_claims")

SAMPLE = 3  # how many refused pseudonyms a refusal names (counts are always complete)
PRUNE_EVERY_S = 3600.0
DAY_S = 86_400.0

SILVER_CLAIM_MIGRATIONS = (
    Migration(
        "silver_claims",
        1,
        sqlite="""
            CREATE TABLE IF NOT EXISTS silver_claims (
                agency TEXT NOT NULL, subject TEXT NOT NULL, reservation TEXT NOT NULL,
                program TEXT NOT NULL, claim TEXT NOT NULL, at REAL NOT NULL,
                settled INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (agency, subject, reservation)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS silver_claims_reservation ON silver_claims (reservation);
            CREATE INDEX IF NOT EXISTS silver_claims_at ON silver_claims (at)
        """,
        postgresql="""
            CREATE TABLE IF NOT EXISTS silver_claims (
                agency TEXT NOT NULL, subject TEXT NOT NULL, reservation TEXT NOT NULL,
                program TEXT NOT NULL, claim TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
                settled INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (agency, subject, reservation));
            CREATE INDEX IF NOT EXISTS silver_claims_reservation ON silver_claims (reservation);
            CREATE INDEX IF NOT EXISTS silver_claims_at ON silver_claims (at)
        """,
    ),
    lease_migration("silver_claims", 2, "silver_claims"),
)

_ROWS = {
    "sqlite": "SELECT value FROM json_each(?)",
    "postgresql": "SELECT jsonb_array_elements_text(CAST(? AS jsonb))",
}
# Claims on these subjects, within the window, by an overlapping program or by this program
# asking other questions (another version).
_CONFLICTS = {
    d: "SELECT subject, program FROM silver_claims WHERE agency = ? AND at > ? AND claim <> ? "  # noqa: S608  # constant fragments, no input
    + "AND (program = ? OR program IN ("
    + rows
    + ")) AND subject IN ("
    + rows
    + ")"
    for d, rows in _ROWS.items()
}
_INSERT = {
    "sqlite": "INSERT INTO silver_claims (agency, subject, reservation, program, claim, at, owner, lease_until) "
    "SELECT ?, value, ?, ?, ?, ?, ?, ? FROM json_each(?)",
    "postgresql": "INSERT INTO silver_claims (agency, subject, reservation, program, claim, at, owner, lease_until) "
    "SELECT ?, value, ?, ?, ?, ?, ?, ? FROM jsonb_array_elements_text(CAST(? AS jsonb)) AS value",
}


class SilverClaims(LeasedReservations):
    """The claims store: a SQLite file (embedded default) or a shared `Database` (replicated mode)."""

    def __init__(
        self,
        store: Path | str | Database,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        lease_clock: Callable[[], float] | None = None,
    ) -> None:
        """``lease_s``: how long a claim may stay unsettled (longer than any check may take);
        ``lease_clock``: the database's clock unless given (tests)."""
        self.db: Database = open_store(store, SILVER_CLAIM_MIGRATIONS)
        self._pruned = float("-inf")
        self._init_leases(lease_s, lease_clock)

    def reserve(
        self,
        subjects: Sequence[str],
        *,
        program: str,
        claim: str,
        overlaps: Sequence[str],
        agency: str,
        now: float,
        window_days: int,
        owner: str | None = None,
    ) -> str:
        """Claim every subject for `program` (as `claim` names it), or refuse the whole batch with
        PolicyDenied if an overlapping program, or another version of this one, answered for any of
        them at silver within the window."""
        unique = list(dict.fromkeys(subjects))
        if not unique:
            raise InvalidInput("no subjects to claim")
        if window_days < 1:
            raise InvalidInput("the silver claim window is at least one day")
        cutoff = now - window_days * DAY_S
        reservation = "slv_" + secrets.token_urlsafe(16)
        with self.db.transaction(lock=[f"silver/{agency}/{s}" for s in unique]) as tx:
            lease_now = self._now(tx)
            # Claims of a dead gateway's check (never settled, lease run out) bar nothing: dropped
            # first (they count nothing, so no lock of their subjects is needed).
            reaped = tx.execute(
                "DELETE FROM silver_claims WHERE settled = 0 AND lease_until <= ?", (lease_now,)
            ).rowcount
            if reaped:
                log.warning("silver_claims_reaped", claims=reaped)
            taken = tx.execute(
                _CONFLICTS[tx.dialect], (agency, cutoff, claim, program, json.dumps(list(overlaps)), json.dumps(unique))
            ).fetchall()
            if taken:
                holders = sorted({str(p) for _, p in taken})
                raise PolicyDenied(
                    f"silver: {len({s for s, _ in taken})} of {len(unique)} subjects have a silver result from "
                    f"program {', '.join(repr(p) for p in holders)} within {window_days} days, which shares "
                    f"criteria with '{program}' (together they would tell which failed); check them at gold",
                    sample_pseudonyms=sorted({str(s) for s, _ in taken})[:SAMPLE],
                    program=program,
                    claimed_by=holders,
                )
            held_by = RESERVATION_OWNER.get() if owner is None else owner
            tx.execute(
                _INSERT[tx.dialect],
                (agency, reservation, program, claim, now, held_by, lease_now + self.lease_s, json.dumps(unique)),
            )
            if now - self._pruned >= PRUNE_EVERY_S:  # claims past the window in force bar nothing
                self._pruned = now
                tx.execute("DELETE FROM silver_claims WHERE at <= ? AND settled = 1", (cutoff,))
        return reservation

    def commit(self, reservation: str) -> bool:
        """The check was answered: its claims stand (and replace the same program's older ones for
        those subjects). False if none was pending or their lease ran out (the caller must then not
        answer)."""
        with self.db.transaction() as tx:
            row = tx.execute(
                "SELECT agency, claim FROM silver_claims WHERE reservation = ? AND settled = 0 LIMIT 1",
                (reservation,),
            ).fetchone()
            if row is None:
                return False
            settled = tx.execute(
                "UPDATE silver_claims SET settled = 1 WHERE reservation = ? AND settled = 0"
                " AND (lease_until IS NULL OR lease_until > ?)",
                (reservation, self._now(tx)),
            ).rowcount
            if not settled:
                return False
            tx.execute(
                "DELETE FROM silver_claims WHERE settled = 1 AND agency = ? AND claim = ? AND reservation <> ?"
                " AND subject IN (SELECT subject FROM silver_claims WHERE reservation = ?)",
                (row[0], row[1], reservation, reservation),
            )
        return True

    def release_owner(self, owner: str) -> int:
        """Drop every unsettled claim of one owner (a dead attempt whose Idempotency-Key claim was
        taken over). Returns how many reservations."""
        if not owner:  # rows of an earlier version have no owner: never released wholesale
            return 0
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT DISTINCT reservation FROM silver_claims WHERE owner = ? AND settled = 0", (owner,)
            ).fetchall()
            tx.execute("DELETE FROM silver_claims WHERE owner = ? AND settled = 0", (owner,))
        return len(rows)

    def release(self, reservation: str) -> bool:
        """The check failed: drop its claims. False if none was pending or the store failed (the
        claims then stay in force, the conservative side)."""
        try:
            with self.db.transaction() as tx:
                cursor = tx.execute("DELETE FROM silver_claims WHERE reservation = ? AND settled = 0", (reservation,))
                return bool(cursor.rowcount)
        except (sqlite3.Error, StoreUnavailable) as exc:
            log.warning("silver_claim_release_failed", error=type(exc).__name__)
            return False

    def holders(self, subject: str, *, agency: str) -> set[str]:
        """The programs holding a claim on one subject (for tests and operators)."""
        with self.db.read() as tx:
            rows = tx.execute(
                "SELECT program FROM silver_claims WHERE agency = ? AND subject = ?", (agency, subject)
            ).fetchall()
        return {str(r[0]) for r in rows}
