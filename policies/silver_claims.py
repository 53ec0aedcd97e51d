"""Silver claims: at most one program of an overlap group per subject, agency and epoch at silver.

The silver (overall) view tells a requester a subject's verdict and how many criteria failed, not
which. Two programs that share a question break that when both answer for one subject: 低保 fails
one criterion and target discovery (income and residence too, plus enrolment) fails none, so
the failure was the registered business, whatever the masks hide. Programs linked by shared
questions form an overlap group (policies/programs.py `overlap_groups`); a silver check claims
each of its subjects for its program in the group's current epoch, and a check of another program
of the group on a claimed subject is refused. Repeats of the same program are allowed (they return
the same masked values). Claims are reserved like the probing budget: committed when the check is
answered, released when it fails for a reason that is not the requester's, and a claim never
settled (the gateway died mid-check) stays in force: the conservative side.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from xgate.db import Database, Migration, open_store
from xgate.errors import InvalidInput, PolicyDenied, StoreUnavailable
from xgate.logging import get_logger

log = get_logger("xgate.policies.silver_claims")

SAMPLE = 3  # how many refused pseudonyms a refusal names (counts are always complete)

SILVER_CLAIM_MIGRATIONS = (
    Migration(
        "silver_claims",
        1,
        sqlite="""
            CREATE TABLE IF NOT EXISTS silver_claims (
                grp TEXT NOT NULL, agency TEXT NOT NULL, subject TEXT NOT NULL, epoch INTEGER NOT NULL,
                program TEXT NOT NULL, reservation TEXT NOT NULL, settled INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (grp, agency, subject, epoch, reservation)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS silver_claims_reservation ON silver_claims (reservation)
        """,
        postgresql="""
            CREATE TABLE IF NOT EXISTS silver_claims (
                grp TEXT NOT NULL, agency TEXT NOT NULL, subject TEXT NOT NULL, epoch BIGINT NOT NULL,
                program TEXT NOT NULL, reservation TEXT NOT NULL, settled INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (grp, agency, subject, epoch, reservation));
            CREATE INDEX IF NOT EXISTS silver_claims_reservation ON silver_claims (reservation)
        """,
    ),
)

_SUBJECTS = {
    "sqlite": "SELECT value FROM json_each(?)",
    "postgresql": "SELECT jsonb_array_elements_text(CAST(? AS jsonb))",
}
_CLAIMED = {
    d: "SELECT subject, program FROM silver_claims WHERE grp = ? AND agency = ? AND epoch = ? AND program <> ? "  # noqa: S608  # constant fragments, no input
    + "AND subject IN ("
    + rows
    + ")"
    for d, rows in _SUBJECTS.items()
}
_INSERT = {
    "sqlite": "INSERT INTO silver_claims (grp, agency, subject, epoch, program, reservation) "
    "SELECT ?, ?, value, ?, ?, ? FROM json_each(?)",
    "postgresql": "INSERT INTO silver_claims (grp, agency, subject, epoch, program, reservation) "
    "SELECT ?, ?, value, ?, ?, ? FROM jsonb_array_elements_text(CAST(? AS jsonb)) AS value",
}


class SilverClaims:
    """The claims store: a SQLite file (embedded default) or a shared `Database` (replicated mode)."""

    def __init__(self, store: Path | str | Database) -> None:
        self.db: Database = open_store(store, SILVER_CLAIM_MIGRATIONS)

    def reserve(
        self, subjects: Sequence[str], *, group: str, program: str, agency: str, epoch: int, epoch_ends: float
    ) -> str:
        """Claim every subject for `program` in the group's epoch, or refuse the whole batch with
        PolicyDenied if another program of the group holds a claim on any of them."""
        unique = list(dict.fromkeys(subjects))
        if not unique:
            raise InvalidInput("no subjects to claim")
        reservation = "slv_" + secrets.token_urlsafe(16)
        locks = [f"silver/{group}/{agency}/{s}" for s in unique]
        with self.db.transaction(lock=locks) as tx:
            taken = tx.execute(_CLAIMED[tx.dialect], (group, agency, epoch, program, json.dumps(unique))).fetchall()
            if taken:
                programs = sorted({str(p) for _, p in taken})
                raise PolicyDenied(
                    f"silver: {len({s for s, _ in taken})} of {len(unique)} subjects already have a silver result "
                    f"from program {', '.join(repr(p) for p in programs)} this epoch, which shares criteria with "
                    f"'{program}' (together they would tell which failed); check at gold, or after "
                    f"{datetime.fromtimestamp(epoch_ends, UTC).isoformat(timespec='seconds')}",
                    sample_pseudonyms=sorted({str(s) for s, _ in taken})[:SAMPLE],
                    program=program,
                    claimed_by=programs,
                )
            tx.execute(_INSERT[tx.dialect], (group, agency, epoch, program, reservation, json.dumps(unique)))
            tx.execute("DELETE FROM silver_claims WHERE grp = ? AND agency = ? AND epoch < ?", (group, agency, epoch))
        return reservation

    def commit(self, reservation: str) -> bool:
        """The check was answered: its claims stay for the epoch. False if none was pending."""
        with self.db.transaction() as tx:
            cursor = tx.execute(
                "UPDATE silver_claims SET settled = 1 WHERE reservation = ? AND settled = 0", (reservation,)
            )
            return bool(cursor.rowcount)

    def release(self, reservation: str) -> bool:
        """The check failed (not the requester's doing): drop its claims. False if none was pending
        or the store failed (the claims then stay in force, the conservative side)."""
        try:
            with self.db.transaction() as tx:
                cursor = tx.execute("DELETE FROM silver_claims WHERE reservation = ? AND settled = 0", (reservation,))
                return bool(cursor.rowcount)
        except (sqlite3.Error, StoreUnavailable) as exc:
            log.warning("silver_claim_release_failed", error=type(exc).__name__)
            return False

    def holder(self, subject: str, *, group: str, agency: str, epoch: int) -> set[str]:
        """The programs holding a claim on one subject in an epoch (for tests and operators)."""
        with self.db.read() as tx:
            rows = tx.execute(
                "SELECT program FROM silver_claims WHERE grp = ? AND agency = ? AND epoch = ? AND subject = ?",
                (group, agency, epoch, subject),
            ).fetchall()
        return {str(r[0]) for r in rows}
