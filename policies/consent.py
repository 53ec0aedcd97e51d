"""Consent registry: a data subject authorises one agency, one purpose, one period (DEPA-style).

Consent comes from the data subject, not the requester: the gateway accepts only consent
artefacts signed by a registered consent manager acting for the subject (`register_signed`,
crypto/artefacts.py; the managers' public keys are in the policy directory's
`consent_managers.toml`), naming the subject, the requesting agency, the purpose, the programs,
the validity and the number of uses. The gateway checks the artefact's scope at every use, and
each node verifies the signed artefact again before it answers (`check_artefact`).

`evaluate` is the pure rule (unknown/expired/revoked/wrong subject/agency/purpose/uses
exhausted → PolicyDenied with a clear reason); `ConsentRegistry` stores artefacts in SQLite,
`verify`s a use without consuming it, and consumes one use per successful `check` inside a write
transaction, so a one-time consent cannot be used twice even by concurrent callers.

A check reserves its use before the fan-out (`reserve`) and commits it when answered. A
reservation carries a lease by the database's clock: one never settled (the gateway died) gives
its use back once the lease runs out, under the consent's lock, at the next use or verification
of the consent. `commit` fails closed: a reservation reaped meanwhile returns False, and a
revocation on record (whenever it was stamped) refuses the answer with PolicyDenied and gives the
use back.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from crypto.artefacts import Signer, verify_artefact
from crypto.policy_bundle import Installed
from policies.leases import LeasedReservations
from policies.types import DEFAULT_LEASE_S, RESERVATION_OWNER
from policies.watched import WatchedFile, registry_entries
from xgate.db import Database, Migration, Tx, lease_migration, open_store
from xgate.errors import ConfigError, CryptoError, InvalidInput, NotFound, PolicyDenied, StoreUnavailable
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
    programs: tuple[str, ...] = ()  # signed artefacts name the programs; () = any program of the purpose
    issuer: str = ""  # the consent manager that signed it
    artefact: str = ""  # the signed artefact, forwarded to the nodes

    @property
    def one_time(self) -> bool:
        return self.max_uses == 1


CONSENT_MANAGERS_FILE = "consent_managers.toml"
_Ident = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,63}$")]


class ConsentBody(BaseModel):
    """What a consent manager signs for a data subject (crypto/artefacts.py, xgate-consent/1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str = Field(pattern=REF_RE.pattern)
    subject: str = Field(pattern=r"^[a-z2-7]{26}$", description="the subject's pseudonym, never a national id")
    agency: _Ident = Field(description="the requesting agency the subject authorises")
    purpose: _Ident
    programs: tuple[_Ident, ...] = Field(min_length=1, max_length=16)
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    max_uses: int | None = Field(default=None, ge=1, le=10_000)

    @model_validator(mode="after")
    def _period(self) -> ConsentBody:
        for name, value in (("valid_from", self.valid_from), ("valid_until", self.valid_until)):
            try:  # stored in UTC: 9999-12-31T23:00-05:00 has no UTC date
                value.astimezone(UTC)
            except OverflowError:
                raise ValueError(f"{name} is out of range once expressed in UTC") from None
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


def parse_artefact(text: str, managers: Mapping[str, Signer]) -> tuple[Signer, ConsentBody]:
    """Verify the signature against the registered consent managers, then the body's shape."""
    if not managers:
        raise PolicyDenied("no consent manager is registered: consent artefacts cannot be accepted")
    try:
        signer, body = verify_artefact(text, managers)
    except CryptoError as exc:
        raise PolicyDenied(f"consent artefact refused: {exc.message}") from None
    try:
        return signer, ConsentBody.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        raise InvalidInput(f"consent artefact: {where}: {first['msg']}") from None


def check_artefact(
    text: str,
    managers: Mapping[str, Signer],
    *,
    ref: str,
    subject: str,
    agency: str,
    purpose: str,
    program: str,
    now: datetime,
) -> None:
    """A node's check of a consent it was sent: signed by a registered manager and in scope now.

    Uses and revocation live in the gateway's registry; the node checks what the subject signed.
    """
    if not text:
        raise PolicyDenied("consent refused: the request carries no signed consent artefact")
    _, body = parse_artefact(text, managers)
    if body.ref != ref:
        raise PolicyDenied("consent refused: the artefact is for another consent reference")
    if not body.valid_from <= now < body.valid_until:
        raise PolicyDenied("consent refused: outside the artefact's validity")
    if body.subject != subject:
        raise PolicyDenied("consent refused: does not cover this subject")
    if body.agency != agency:
        raise PolicyDenied(f"consent refused: given to another agency, not '{agency}'")
    if body.purpose != purpose:
        raise PolicyDenied(f"consent refused: given for another purpose, not '{purpose}'")
    if program not in body.programs:
        raise PolicyDenied(f"consent refused: does not cover program '{program}'")


class ConsentManagers(WatchedFile[dict[str, Signer]]):
    """The registered consent managers of a policy directory, re-read when the file changes."""

    def __init__(self, policy_dir: Path, bundle: Callable[[], Installed | None] | None = None) -> None:
        # bundle: the signed policy bundle in force (signed mode): only the file it signed is loaded
        super().__init__(policy_dir / CONSENT_MANAGERS_FILE, lambda path: load_consent_managers(path.parent), bundle)


def load_consent_managers(policy_dir: Path) -> dict[str, Signer]:
    """The registered consent managers (`consent_managers.toml`: [[consent_manager]] name, public_key)."""
    path = policy_dir / CONSENT_MANAGERS_FILE
    out: dict[str, Signer] = {}
    for entry in registry_entries(path, "consent_manager", ("name", "public_key")):
        try:
            signer = Signer.of(str(entry["name"]), str(entry["public_key"]))
        except CryptoError as exc:
            raise ConfigError(f"{path}: {exc.message}") from None
        out[signer.key_id] = signer
    return out


def evaluate(
    record: ConsentRecord | None,
    subject: str,
    agency: str,
    purpose: str,
    now: datetime,
    uses_in_window: int = 0,
    program: str | None = None,
) -> None:
    """Raise PolicyDenied unless the consent covers this use right now (pure)."""
    if record is None:
        raise PolicyDenied("consent refused: unknown consent reference")
    # The agency first: another agency's caseworker holding a leaked reference learns nothing of
    # its state (revoked, expired) or of whether a person is its subject.
    if agency != record.agency:
        raise PolicyDenied(f"consent refused: given to another agency, not '{agency}'", consent_ref=record.ref)
    if record.revoked_at is not None and record.revoked_at <= now:
        raise PolicyDenied("consent refused: revoked by the data subject", consent_ref=record.ref)
    if now < record.valid_from:
        raise PolicyDenied("consent refused: not yet valid", consent_ref=record.ref)
    if now >= record.valid_until:
        raise PolicyDenied("consent refused: expired", consent_ref=record.ref)
    if subject != record.subject:
        raise PolicyDenied("consent refused: does not cover this subject", consent_ref=record.ref)
    if purpose != record.purpose:
        raise PolicyDenied(f"consent refused: given for another purpose, not '{purpose}'", consent_ref=record.ref)
    if program is not None and record.programs and program not in record.programs:
        raise PolicyDenied(f"consent refused: does not cover program '{program}'", consent_ref=record.ref)
    if record.max_uses is not None and record.uses >= record.max_uses:
        what = "one-time consent already used" if record.one_time else f"all {record.max_uses} uses consumed"
        raise PolicyDenied(f"consent refused: {what}", consent_ref=record.ref)
    if record.frequency_uses is not None and uses_in_window >= record.frequency_uses:
        raise PolicyDenied(
            f"consent refused: at most {record.frequency_uses} uses per {record.frequency_days} days",
            consent_ref=record.ref,
        )


def _revocation_final(record: ConsentRecord, at: datetime) -> ConsentRecord:
    """Under the consent's lock a revocation on record is final, whenever it was stamped: `at` was
    read before this use waited for the lock, and a revocation made meanwhile (or on a replica whose
    clock runs ahead) is stamped after it."""
    if record.revoked_at is not None and record.revoked_at > at:
        return replace(record, revoked_at=at)
    return record


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise InvalidInput(f"{name} must carry a time zone")
    return value.astimezone(UTC)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


_CONSENT_DDL = """
    CREATE TABLE IF NOT EXISTS consents (
        ref TEXT PRIMARY KEY, subject TEXT NOT NULL, agency TEXT NOT NULL, purpose TEXT NOT NULL,
        valid_from TEXT NOT NULL, valid_until TEXT NOT NULL, max_uses INTEGER,
        frequency_uses INTEGER, frequency_days INTEGER, uses INTEGER NOT NULL DEFAULT 0,
        revoked_at TEXT, created_at TEXT NOT NULL,
        programs TEXT NOT NULL DEFAULT '', issuer TEXT NOT NULL DEFAULT '', artefact TEXT NOT NULL DEFAULT '');
    CREATE TABLE IF NOT EXISTS consent_uses (ref TEXT NOT NULL, at TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS consent_uses_ref ON consent_uses (ref, at);
    CREATE TABLE IF NOT EXISTS consent_reservations (
        id TEXT PRIMARY KEY, ref TEXT NOT NULL, at TEXT NOT NULL)
"""
CONSENT_MIGRATIONS = (
    Migration("consent_registry", 1, sqlite=_CONSENT_DDL, postgresql=_CONSENT_DDL),
    lease_migration("consent_registry", 2, "consent_reservations"),
)

# Give back exactly one recorded use (uses at one instant are interchangeable): by rowid in SQLite, ctid in PostgreSQL.
_DELETE_ONE_USE = {
    "sqlite": "DELETE FROM consent_uses WHERE rowid = "
    "(SELECT rowid FROM consent_uses WHERE ref = ? AND at = ? LIMIT 1)",
    "postgresql": "DELETE FROM consent_uses WHERE ctid = "
    "(SELECT ctid FROM consent_uses WHERE ref = ? AND at = ? LIMIT 1)",
}


class ConsentRegistry(LeasedReservations):
    """Consents in a SQLite file (embedded default) or the replicas' shared `Database` (PostgreSQL).

    Every use locks its consent (xgate/db.py lock keys), so a one-time consent raced through several
    gateway replicas is used exactly once.
    """

    def __init__(
        self,
        store: Path | str | Database,
        purposes: Collection[str] | None = None,
        managers: ConsentManagers | Mapping[str, Signer] | None = None,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        lease_clock: Callable[[], float] | None = None,
    ) -> None:
        """``lease_s``: how long a reserved use may stay pending (longer than any check may take);
        ``lease_clock``: the database's clock unless given (tests)."""
        self.db: Database = open_store(store, CONSENT_MIGRATIONS)
        if isinstance(store, (str, Path)):
            self._add_artefact_columns()
        self.purposes = frozenset(purposes) if purposes is not None else None
        self._managers = managers
        self._init_leases(lease_s, lease_clock)

    def _add_artefact_columns(self) -> None:
        """SQLite files of earlier versions gain the artefact columns."""
        with self.db.transaction() as tx:
            have = {str(row[1]) for row in tx.execute("PRAGMA table_info(consents)").fetchall()}
            for column in ("programs", "issuer", "artefact"):
                if column not in have:
                    tx.execute(f"ALTER TABLE consents ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")

    def managers(self) -> Mapping[str, Signer]:
        if isinstance(self._managers, ConsentManagers):
            return self._managers.current()
        return self._managers or {}

    def register_signed(self, artefact: str, issuer: str | None = None) -> ConsentRecord:
        """Store a consent artefact signed by a registered consent manager; its `ref` is its reference.

        This is how consents enter the gateway: a requester cannot sign one, so it cannot create one.
        `issuer`: the consent manager registering it, whose own key must have signed it.
        """
        signer, body = parse_artefact(artefact, self.managers())
        if issuer is not None and signer.name != issuer:
            raise PolicyDenied("consent artefact refused: signed by another consent manager's key")
        if self.purposes is not None and body.purpose not in self.purposes:
            raise InvalidInput(f"purpose '{body.purpose}' is not registered")
        with self.db.transaction(lock=[f"consent/{body.ref}"]) as tx:
            if tx.execute("SELECT 1 FROM consents WHERE ref = ?", (body.ref,)).fetchone():
                raise InvalidInput(f"consent {body.ref} is already registered")
            tx.execute(
                "INSERT INTO consents (ref, subject, agency, purpose, valid_from, valid_until, max_uses, "
                "created_at, programs, issuer, artefact) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    body.ref,
                    body.subject,
                    body.agency,
                    body.purpose,
                    body.valid_from.astimezone(UTC).isoformat(),
                    body.valid_until.astimezone(UTC).isoformat(),
                    body.max_uses,
                    datetime.now(UTC).isoformat(),
                    json.dumps(list(body.programs)),
                    signer.name,
                    artefact,
                ),
            )
        return self.lookup(body.ref)

    def artefact(self, ref: str) -> str:
        """The signed artefact of a consent ('' for one registered without a signature)."""
        return self.lookup(ref).artefact

    def issued_by(self, issuer: str, subject: str | None = None) -> list[ConsentRecord]:
        """The consents a consent manager registered (optionally for one subject), newest first."""
        with self.db.read() as tx:
            refs = [
                str(r[0])
                for r in tx.execute(
                    "SELECT ref FROM consents WHERE issuer = ? AND (CAST(? AS TEXT) IS NULL OR subject = ?) "
                    "ORDER BY created_at DESC LIMIT 1000",
                    (issuer, subject, subject),
                ).fetchall()
            ]
            return [r for r in (self._get(tx, ref) for ref in refs) if r is not None]

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
        with self.db.transaction() as tx:
            tx.execute(
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
        with self.db.read() as tx:
            record = self._get(tx, ref)
        if record is None:
            raise NotFound("no such consent")
        return record

    def revoke(self, ref: str, now: datetime | None = None) -> ConsentRecord:
        """Revoke (idempotent: a second revoke keeps the first time)."""
        at = _aware(now, "now") if now is not None else datetime.now(UTC)
        with self.db.transaction(lock=[f"consent/{ref}"]) as tx:
            if self._get(tx, ref) is None:
                raise NotFound("no such consent")
            tx.execute("UPDATE consents SET revoked_at = ? WHERE ref = ? AND revoked_at IS NULL", (at.isoformat(), ref))
        return self.lookup(ref)

    def verify(
        self, ref: str, subject: str, agency: str, purpose: str, now: datetime, program: str | None = None
    ) -> None:
        """Raise PolicyDenied unless the consent would cover this use now; consumes nothing.

        The gateway calls this before spending the probing budget, so a refused request burns none.
        """
        self.reap(ref)  # a dead gateway's reserved use must not refuse this one
        try:
            record: ConsentRecord | None = self.lookup(ref)
        except NotFound:
            record = None
        evaluate(record, subject, agency, purpose, now, program=program)

    def check(self, ref: str, subject: str, agency: str, purpose: str, now: datetime | None = None) -> ConsentRecord:
        """Consume one use of the consent for (subject, agency, purpose), or raise PolicyDenied."""
        self._use(ref, subject, agency, purpose, now, reservation=None)
        return self.lookup(ref)

    def reserve(
        self,
        ref: str,
        subject: str,
        agency: str,
        purpose: str,
        now: datetime | None = None,
        program: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Take one use now (so concurrent callers cannot share it) and return a reservation id:
        `commit` it when the check was answered, `release` it when the check failed for a reason
        that is not the requester's. A one-time consent is therefore used only by an answer."""
        reservation = "crs_" + secrets.token_urlsafe(16)
        held_by = RESERVATION_OWNER.get() if owner is None else owner
        self._use(ref, subject, agency, purpose, now, reservation=reservation, program=program, owner=held_by)
        return reservation

    def revoked(self, reservation: str) -> bool:
        """Whether the consent a pending reservation uses is revoked (a read, before anything is charged)."""
        return self._reserved_record_revoked("consent_reservations", reservation, self._get)

    def commit(self, reservation: str) -> bool:
        """Make the reserved use final: the check is about to be answered. False if it was not
        pending or its lease ran out (reaped, or given back now). Raises PolicyDenied, giving the
        use back, if the consent was revoked meanwhile (any revocation on record is final here,
        under the consent's lock): the answer must then not be delivered."""
        with self.db.read() as tx:
            found = tx.execute("SELECT ref FROM consent_reservations WHERE id = ?", (reservation,)).fetchone()
        if found is None:
            return False
        revoked = False
        with self.db.transaction(lock=[f"consent/{found[0]}"]) as tx:
            row = tx.execute(
                "SELECT ref, at, lease_until FROM consent_reservations WHERE id = ?", (reservation,)
            ).fetchone()
            if row is None:  # released or reaped meanwhile
                return False
            record = self._get(tx, str(row[0]))
            revoked = record is not None and record.revoked_at is not None
            if revoked or (row[2] is not None and float(row[2]) <= self._now(tx)):
                self._give_back(tx, reservation, row)
            else:
                tx.execute("DELETE FROM consent_reservations WHERE id = ?", (reservation,))
                return True
        if revoked:
            raise PolicyDenied(
                "consent refused: revoked by the data subject while the check ran; its answer is withheld",
                consent_ref=str(found[0]),
            )
        return False

    def reap(self, ref: str) -> int:
        """Give back the reserved uses of one consent whose lease ran out, under its lock."""
        with self.db.transaction(lock=[f"consent/{ref}"]) as tx:
            return self._reap(tx, ref)

    def _reap(self, tx: Tx, ref: str) -> int:
        rows = tx.execute(
            "SELECT id, ref, at FROM consent_reservations WHERE ref = ? AND lease_until <= ?", (ref, self._now(tx))
        ).fetchall()
        for row in rows:
            self._give_back(tx, str(row[0]), row[1:])
        if rows:
            log.warning("consent_reservations_reaped", reservations=len(rows))
        return len(rows)

    def release_owner(self, owner: str) -> int:
        """Give back every pending use reserved by one owner (a dead attempt whose claim was taken over)."""
        return self._release_owned("consent_reservations", owner, self.release)

    @staticmethod
    def _give_back(tx: Tx, reservation: str, row: Any) -> bool:
        """Within the consent's lock: undo one reserved use (the reservation row first, so a
        racing commit or release finds it gone)."""
        if tx.execute("DELETE FROM consent_reservations WHERE id = ?", (reservation,)).rowcount != 1:
            return False
        tx.execute("UPDATE consents SET uses = uses - 1 WHERE ref = ? AND uses > 0", (row[0],))
        tx.execute(_DELETE_ONE_USE[tx.dialect], (row[0], row[1]))
        return True

    def release(self, reservation: str) -> bool:
        """Give the reserved use back (idempotent: False if it was not pending, or on a storage
        error, which leaves the use taken: the conservative side)."""
        try:
            return self._release(reservation)
        except (sqlite3.Error, StoreUnavailable) as exc:
            log.warning("consent_release_failed", error=type(exc).__name__)
            return False

    def _release(self, reservation: str) -> bool:
        with self.db.read() as tx:
            found = tx.execute("SELECT ref FROM consent_reservations WHERE id = ?", (reservation,)).fetchone()
        if found is None:
            return False
        with self.db.transaction(lock=[f"consent/{found[0]}"]) as tx:
            row = tx.execute("SELECT ref, at FROM consent_reservations WHERE id = ?", (reservation,)).fetchone()
            if row is None:  # committed or released meanwhile, here or on another replica
                return False
            return self._give_back(tx, reservation, row)

    def _use(
        self,
        ref: str,
        subject: str,
        agency: str,
        purpose: str,
        now: datetime | None,
        reservation: str | None,
        program: str | None = None,
        owner: str = "",
    ) -> None:
        at = _aware(now, "now") if now is not None else datetime.now(UTC)
        with self.db.transaction(lock=[f"consent/{ref}"]) as tx:
            self._reap(tx, ref)  # a dead gateway's reserved use is given back first
            record = self._get(tx, ref)
            window = 0
            if record is not None and record.frequency_days is not None:
                since = (at - timedelta(days=record.frequency_days)).isoformat()
                counted = tx.execute("SELECT COUNT(*) FROM consent_uses WHERE ref = ? AND at > ?", (ref, since))
                window = int(counted.fetchone()[0])
            if record is not None:
                record = _revocation_final(record, at)
            evaluate(record, subject, agency, purpose, at, window, program=program)
            tx.execute("UPDATE consents SET uses = uses + 1 WHERE ref = ?", (ref,))
            tx.execute("INSERT INTO consent_uses (ref, at) VALUES (?, ?)", (ref, at.isoformat()))
            if reservation is not None:
                tx.execute(
                    "INSERT INTO consent_reservations (id, ref, at, owner, lease_until) VALUES (?, ?, ?, ?, ?)",
                    (reservation, ref, at.isoformat(), owner, self._now(tx) + self.lease_s),
                )

    @staticmethod
    def _get(tx: Tx, ref: str) -> ConsentRecord | None:
        if not REF_RE.match(ref):
            return None
        row = tx.execute(
            "SELECT ref, subject, agency, purpose, valid_from, valid_until, max_uses, frequency_uses, "
            "frequency_days, uses, revoked_at, created_at, programs, issuer, artefact FROM consents WHERE ref = ?",
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
            programs=tuple(json.loads(row[12])) if row[12] else (),
            issuer=str(row[13]),
            artefact=str(row[14]),
        )
