"""Consent registry: a data subject authorises one agency, one purpose, one period (DEPA-style).

`evaluate` is the pure rule (unknown/expired/revoked/wrong subject/agency/purpose/uses
exhausted → PolicyDenied with a clear reason); `ConsentRegistry` stores artefacts in SQLite,
`verify`s a use without consuming it, and consumes one use per successful `check` inside a write
transaction, so a one-time consent cannot be used twice even by concurrent callers.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from policies.sqlite_tx import immediate, init_db
from xgate.errors import InvalidInput, NotFound, PolicyDenied
from xgate.logging import get_logger

log = get_logger("xgate.policies.consent")

REF_RE = re.compile(r"^cns_[A-Za-z0-9_\-]{22}$")


@dataclass(frozen=True)
class ConsentRecord:
    ref: str
    subject: str  # pseudonym, never a national id
    agency: str  # the agency the subject authorised
    purpose: str
    valid_from: datetime
    valid_until: datetime
    max_uses: int | None  # None: unlimited within the period; 1: one-time consent
    frequency_uses: int | None  # at most this many uses ...
    frequency_days: int | None  # ... per this many days
    uses: int
    revoked_at: datetime | None
    created_at: datetime

    @property
    def one_time(self) -> bool:
        return self.max_uses == 1


def evaluate(
    record: ConsentRecord | None,
    subject: str,
    agency: str,
    purpose: str,
    now: datetime,
    uses_in_window: int = 0,
) -> None:
    """Raise PolicyDenied unless the consent covers this use right now (pure)."""
    if record is None:
        raise PolicyDenied("consent refused: unknown consent reference")
    if record.revoked_at is not None and record.revoked_at <= now:
        raise PolicyDenied("consent refused: revoked by the data subject", consent_ref=record.ref)
    if now < record.valid_from:
        raise PolicyDenied("consent refused: not yet valid", consent_ref=record.ref)
    if now >= record.valid_until:
        raise PolicyDenied("consent refused: expired", consent_ref=record.ref)
    if subject != record.subject:
        raise PolicyDenied("consent refused: does not cover this subject", consent_ref=record.ref)
    if agency != record.agency:
        raise PolicyDenied(f"consent refused: given to another agency, not '{agency}'", consent_ref=record.ref)
    if purpose != record.purpose:
        raise PolicyDenied(f"consent refused: given for another purpose, not '{purpose}'", consent_ref=record.ref)
    if record.max_uses is not None and record.uses >= record.max_uses:
        what = "one-time consent already used" if record.one_time else f"all {record.max_uses} uses consumed"
        raise PolicyDenied(f"consent refused: {what}", consent_ref=record.ref)
    if record.frequency_uses is not None and uses_in_window >= record.frequency_uses:
        raise PolicyDenied(
            f"consent refused: at most {record.frequency_uses} uses per {record.frequency_days} days",
            consent_ref=record.ref,
        )


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise InvalidInput(f"{name} must carry a time zone")
    return value.astimezone(UTC)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class ConsentRegistry:
    def __init__(self, path: Path | str, purposes: Collection[str] | None = None) -> None:
        self.path = Path(path)
        self.purposes = frozenset(purposes) if purposes is not None else None
        init_db(
            self.path,
            """
            CREATE TABLE IF NOT EXISTS consents (
                ref TEXT PRIMARY KEY, subject TEXT NOT NULL, agency TEXT NOT NULL, purpose TEXT NOT NULL,
                valid_from TEXT NOT NULL, valid_until TEXT NOT NULL, max_uses INTEGER,
                frequency_uses INTEGER, frequency_days INTEGER, uses INTEGER NOT NULL DEFAULT 0,
                revoked_at TEXT, created_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS consent_uses (ref TEXT NOT NULL, at TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS consent_uses_ref ON consent_uses (ref, at);
            CREATE TABLE IF NOT EXISTS consent_reservations (
                id TEXT PRIMARY KEY, ref TEXT NOT NULL, at TEXT NOT NULL);
            """,
        )

    def register(
        self,
        subject: str,
        agency: str,
        purpose: str,
        valid_from: datetime,
        valid_until: datetime,
        max_uses: int | None = None,
        frequency: tuple[int, int] | None = None,
    ) -> str:
        """Store a consent artefact; returns its reference. frequency = (uses, per_days)."""
        start, end = _aware(valid_from, "valid_from"), _aware(valid_until, "valid_until")
        if end <= start:
            raise InvalidInput("valid_until must be after valid_from")
        if self.purposes is not None and purpose not in self.purposes:
            raise InvalidInput(f"purpose '{purpose}' is not registered")
        if max_uses is not None and max_uses < 1:
            raise InvalidInput("max_uses must be at least 1")
        if frequency is not None and (frequency[0] < 1 or frequency[1] < 1):
            raise InvalidInput("frequency needs at least 1 use per at least 1 day")
        ref = "cns_" + secrets.token_urlsafe(16)
        freq_uses, freq_days = frequency if frequency is not None else (None, None)
        with immediate(self.path) as conn:
            conn.execute(
                "INSERT INTO consents (ref, subject, agency, purpose, valid_from, valid_until, max_uses, "
                "frequency_uses, frequency_days, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ref,
                    subject,
                    agency,
                    purpose,
                    start.isoformat(),
                    end.isoformat(),
                    max_uses,
                    freq_uses,
                    freq_days,
                    datetime.now(UTC).isoformat(),
                ),
            )
        return ref

    def lookup(self, ref: str) -> ConsentRecord:
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            record = self._get(conn, ref)
        finally:
            conn.close()
        if record is None:
            raise NotFound("no such consent")
        return record

    def revoke(self, ref: str, now: datetime | None = None) -> ConsentRecord:
        """Revoke (idempotent: a second revoke keeps the first time)."""
        at = _aware(now, "now") if now is not None else datetime.now(UTC)
        with immediate(self.path) as conn:
            if self._get(conn, ref) is None:
                raise NotFound("no such consent")
            conn.execute(
                "UPDATE consents SET revoked_at = ? WHERE ref = ? AND revoked_at IS NULL", (at.isoformat(), ref)
            )
        return self.lookup(ref)

    def verify(self, ref: str, subject: str, agency: str, purpose: str, now: datetime) -> None:
        """Raise PolicyDenied unless the consent would cover this use now; consumes nothing.

        The gateway calls this before spending the probing budget, so a refused request burns none.
        """
        try:
            record: ConsentRecord | None = self.lookup(ref)
        except NotFound:
            record = None
        evaluate(record, subject, agency, purpose, now)

    def check(self, ref: str, subject: str, agency: str, purpose: str, now: datetime | None = None) -> ConsentRecord:
        """Consume one use of the consent for (subject, agency, purpose), or raise PolicyDenied."""
        self._use(ref, subject, agency, purpose, now, reservation=None)
        return self.lookup(ref)

    def reserve(self, ref: str, subject: str, agency: str, purpose: str, now: datetime | None = None) -> str:
        """Take one use now (so concurrent callers cannot share it) and return a reservation id:
        `commit` it when the check was answered, `release` it when the check failed for a reason
        that is not the requester's. A one-time consent is therefore used only by an answer."""
        reservation = "crs_" + secrets.token_urlsafe(16)
        self._use(ref, subject, agency, purpose, now, reservation=reservation)
        return reservation

    def commit(self, reservation: str) -> bool:
        with immediate(self.path) as conn:
            return conn.execute("DELETE FROM consent_reservations WHERE id = ?", (reservation,)).rowcount == 1

    def release(self, reservation: str) -> bool:
        """Give the reserved use back (idempotent: False if it was not pending, or on a storage
        error, which leaves the use taken: the conservative side)."""
        try:
            return self._release(reservation)
        except sqlite3.Error as exc:
            log.warning("consent_release_failed", error=type(exc).__name__)
            return False

    def _release(self, reservation: str) -> bool:
        with immediate(self.path) as conn:
            row = conn.execute("SELECT ref, at FROM consent_reservations WHERE id = ?", (reservation,)).fetchone()
            if row is None:
                return False
            conn.execute("UPDATE consents SET uses = uses - 1 WHERE ref = ? AND uses > 0", (row[0],))
            conn.execute(
                "DELETE FROM consent_uses WHERE rowid = "
                "(SELECT rowid FROM consent_uses WHERE ref = ? AND at = ? LIMIT 1)",
                (row[0], row[1]),
            )
            conn.execute("DELETE FROM consent_reservations WHERE id = ?", (reservation,))
        return True

    def _use(
        self, ref: str, subject: str, agency: str, purpose: str, now: datetime | None, reservation: str | None
    ) -> None:
        at = _aware(now, "now") if now is not None else datetime.now(UTC)
        with immediate(self.path) as conn:
            record = self._get(conn, ref)
            window = 0
            if record is not None and record.frequency_days is not None:
                since = (at - timedelta(days=record.frequency_days)).isoformat()
                window = int(
                    conn.execute("SELECT COUNT(*) FROM consent_uses WHERE ref = ? AND at > ?", (ref, since)).fetchone()[
                        0
                    ]
                )
            evaluate(record, subject, agency, purpose, at, window)
            conn.execute("UPDATE consents SET uses = uses + 1 WHERE ref = ?", (ref,))
            conn.execute("INSERT INTO consent_uses (ref, at) VALUES (?, ?)", (ref, at.isoformat()))
            if reservation is not None:
                conn.execute(
                    "INSERT INTO consent_reservations (id, ref, at) VALUES (?, ?, ?)",
                    (reservation, ref, at.isoformat()),
                )

    @staticmethod
    def _get(conn: sqlite3.Connection, ref: str) -> ConsentRecord | None:
        if not REF_RE.match(ref):
            return None
        row = conn.execute(
            "SELECT ref, subject, agency, purpose, valid_from, valid_until, max_uses, frequency_uses, "
            "frequency_days, uses, revoked_at, created_at FROM consents WHERE ref = ?",
            (ref,),
        ).fetchone()
        if row is None:
            return None
        return ConsentRecord(
            ref=row[0],
            subject=row[1],
            agency=row[2],
            purpose=row[3],
            valid_from=datetime.fromisoformat(row[4]),
            valid_until=datetime.fromisoformat(row[5]),
            max_uses=row[6],
            frequency_uses=row[7],
            frequency_days=row[8],
            uses=int(row[9]),
            revoked_at=_ts(row[10]),
            created_at=datetime.fromisoformat(row[11]),
        )
