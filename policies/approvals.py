"""Approvals: a registered approver's signed authorisation for a case, checked at every use.

Core-class data needs an approval (policies/baseline.cedar). An approval is not a free-text
reference the requester types: it is an artefact signed by an approver whose Ed25519 key is
registered in the policy directory's `approvers.toml` (crypto/artefacts.py, format
`xgate-approval/1`), registered at the gateway by that approver (role `approver`), and named by
its reference (`apr_` + 22 characters) in a check's `approval_ref`. The body names:

* the approver (its user id, as in approvers.toml) and its official role (e.g. `case_supervisor`),
  one of the roles approvers.toml registers it in;
* the requesting agencies it approves for (each one the approver is registered for in
  approvers.toml: an agency's own approver, or a federation data office approving for several);
* the programs and the case: exact `case_ids`, or a `case_id_prefix` (a standing approval for a
  series of cases, e.g. "DB-2026-"; the empty prefix covers every case of the programs and is
  what the development federation registers, app/devfed.py);
* the scope: a list of subject pseudonyms, or a maximum number of subjects (`max_subjects`,
  charged per subject like consent uses: reserved before the fan-out, committed for an answer,
  released when the check fails for a reason that is not the requester's);
* validity (valid_from, valid_until).

`evaluate` is the pure rule; `check_approval_artefact` is a node's own check of the signed
artefact it was forwarded (scope and validity: uses and revocation live at the gateway);
`ApprovalRegistry` stores approvals (SQLite or the replicas' shared database) and charges
count-scoped ones atomically. Every check's use is a reservation with a lease by the database's
clock (count-scoped or not): one never settled (the gateway died) gives its subjects back once
the lease runs out, under the approval's lock, at the next use or verification of the approval;
`commit` fails closed on a reaped reservation (False) and on a revocation on record (PolicyDenied:
the answer is withheld). Any revocation on record is final, whenever it was stamped (a replica
whose clock runs ahead stamps it in the future).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from crypto.artefacts import Signer, verify_artefact
from crypto.policy_bundle import Installed
from policies.leases import LeasedReservations
from policies.types import DEFAULT_LEASE_S, RESERVATION_OWNER
from policies.watched import WatchedFile, registry_entries
from xgate.db import Database, Migration, Tx, lease_migration, open_store
from xgate.errors import ConfigError, CryptoError, InvalidInput, NotFound, PolicyDenied, StoreUnavailable
from xgate.logging import get_logger
from xgate.pseudonym import contains_national_id

log = get_logger("xgate.policies.approvals")

APPROVAL_FORMAT = "xgate-approval/1"
APPROVERS_FILE = "approvers.toml"
REF_RE = re.compile(r"^apr_[A-Za-z0-9_\-]{22}$")
MAX_SUBJECTS = 10_000_000
_Ident = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
_ROLE_RE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")  # an approver_role (`_Ident`)
_Pseudonym = Annotated[str, StringConstraints(pattern=r"^[a-z2-7]{26}$")]
_DatasetId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}(\.[a-z0-9_]{1,63})?$")]
_CaseId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


def new_ref() -> str:
    return "apr_" + secrets.token_urlsafe(16)


class ApprovalBody(BaseModel):
    """What an approver signs (crypto/artefacts.py, xgate-approval/1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str = Field(pattern=REF_RE.pattern)
    approver: str = Field(min_length=2, max_length=64, description="the approver's user id (approvers.toml name)")
    approver_role: _Ident = Field(description="the approver's official role, e.g. case_supervisor")
    agencies: tuple[_Ident, ...] = Field(
        min_length=1, max_length=16, description="the requesting agencies it approves for (the approver's own)"
    )
    programs: tuple[_Ident, ...] = Field(default=(), max_length=16, description="eligibility programs (checks)")
    datasets: tuple[_DatasetId, ...] = Field(
        default=(), max_length=64, description="registered training datasets a job may read (training)"
    )
    case_ids: tuple[_CaseId, ...] | None = Field(default=None, min_length=1, max_length=1000)
    case_id_prefix: str | None = Field(default=None, max_length=128)
    subjects: tuple[_Pseudonym, ...] | None = Field(default=None, min_length=1, max_length=10_000)
    max_subjects: int | None = Field(default=None, ge=1, le=MAX_SUBJECTS)
    valid_from: AwareDatetime
    valid_until: AwareDatetime

    @field_validator("approver", "case_ids", "case_id_prefix")
    @classmethod
    def _no_national_id(cls, value: Any, info: ValidationInfo) -> Any:
        # Case ids and the approver's id reach every node's and the gateway's append-only logs. An
        # approval read back from the registry (context {"stored": True}) keeps the checks it was
        # registered under.
        if isinstance(info.context, dict) and info.context.get("stored") is True:
            return value
        for text in (value,) if isinstance(value, str) else value or ():
            if contains_national_id(text):
                raise ValueError(
                    f"{info.field_name} holds what looks like a resident identity number; "
                    "name cases by references that carry no personal data"
                )
        return value

    @field_validator("subjects")
    @classmethod
    def _each_subject_once(cls, value: Any, info: ValidationInfo) -> Any:
        # An approval registered before this rule keeps loading (context {"stored": True}).
        stored = isinstance(info.context, dict) and info.context.get("stored") is True
        if value is not None and not stored and len(set(value)) != len(value):
            raise ValueError("subjects name the same pseudonym twice")
        return value

    @model_validator(mode="after")
    def _scope(self) -> ApprovalBody:
        if not self.programs and not self.datasets:
            raise ValueError("name at least one program (checks) or dataset (training)")
        if (self.case_ids is None) == (self.case_id_prefix is None):
            raise ValueError("name exactly one of case_ids and case_id_prefix")
        # Subjects scope a check; a training job reads whole registered datasets, so a
        # training-only approval names no subject scope.
        if self.programs and (self.subjects is None) == (self.max_subjects is None):
            raise ValueError("name exactly one of subjects and max_subjects")
        if not self.programs and (self.subjects is not None or self.max_subjects is not None):
            raise ValueError("a training-only approval (no program) takes no subjects or max_subjects")
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self

    def covers_case(self, case_id: str) -> bool:
        if self.case_ids is not None:
            return case_id in self.case_ids
        return case_id.startswith(self.case_id_prefix or "")


@dataclass(frozen=True)
class Approver:
    """A registered approver: its signing key, the requesting agencies it may approve for, and the
    official roles it holds (an approval names one of them)."""

    signer: Signer
    agencies: tuple[str, ...]
    roles: tuple[str, ...]


@dataclass(frozen=True)
class ApprovalRecord:
    body: ApprovalBody
    artefact: str
    uses: int  # subjects charged so far (count-scoped approvals)
    revoked_at: datetime | None
    created_at: datetime

    @property
    def ref(self) -> str:
        return self.body.ref


def load_approvers(policy_dir: Path) -> dict[str, Approver]:
    """The registered approvers (`approvers.toml`: [[approver]] name, agencies, roles, public_key), by key id."""
    path = policy_dir / APPROVERS_FILE
    out: dict[str, Approver] = {}
    for i, entry in enumerate(registry_entries(path, "approver", ("name", "agencies", "roles", "public_key"))):
        agencies, roles = entry["agencies"], entry["roles"]
        if not isinstance(agencies, list) or not agencies or not all(isinstance(a, str) for a in agencies):
            raise ConfigError(f"{path}: approver #{i + 1}: agencies must be a non-empty list of agency ids")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) and _ROLE_RE.match(r) for r in roles):
            raise ConfigError(
                f"{path}: approver #{i + 1}: roles must be a non-empty list of role names (e.g. case_supervisor)"
            )
        try:
            signer = Signer.of(str(entry["name"]), str(entry["public_key"]))
        except CryptoError as exc:
            raise ConfigError(f"{path}: {exc.message}") from None
        out[signer.key_id] = Approver(signer, tuple(agencies), tuple(roles))
    return out


class Approvers(WatchedFile[dict[str, Approver]]):
    """The registered approvers of a policy directory, re-read when the file changes."""

    def __init__(self, policy_dir: Path, bundle: Callable[[], Installed | None] | None = None) -> None:
        # bundle: the signed policy bundle in force (signed mode): only the file it signed is loaded
        super().__init__(policy_dir / APPROVERS_FILE, lambda path: load_approvers(path.parent), bundle)


def parse_approval(text: str, approvers: Mapping[str, Approver]) -> tuple[Approver, ApprovalBody]:
    """Verify the signature against the registered approvers, then the body's shape and signer."""
    if not approvers:
        raise PolicyDenied("no approver is registered: approvals cannot be accepted")
    try:
        signer, raw = verify_artefact(text, {k: a.signer for k, a in approvers.items()}, fmt=APPROVAL_FORMAT)
    except CryptoError as exc:
        raise PolicyDenied(f"approval refused: {exc.message}") from None
    try:
        body = ApprovalBody.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "body"
        raise InvalidInput(f"approval artefact: {where}: {first['msg']}") from None
    approver = approvers[signer.key_id]
    if body.approver != signer.name:
        raise PolicyDenied("approval refused: the body names another approver than its signer")
    if not set(body.agencies) <= set(approver.agencies):
        raise PolicyDenied("approval refused: names an agency its approver is not registered to approve for")
    if body.approver_role not in approver.roles:
        raise PolicyDenied(f"approval refused: its approver is not registered in the role '{body.approver_role}'")
    return approver, body


def in_scope(
    body: ApprovalBody, *, agency: str, program: str, case_id: str, subjects: Sequence[str], now: datetime
) -> None:
    """Raise PolicyDenied unless the signed scope covers this request (no counting, no revocation)."""
    ref = body.ref
    _validity(body, agency, now)
    if program not in body.programs:
        raise PolicyDenied(f"approval {ref} does not cover program '{program}'", approval_ref=ref)
    if not body.covers_case(case_id):
        raise PolicyDenied(f"approval {ref} does not cover case '{case_id}'", approval_ref=ref)
    if body.subjects is not None and not set(subjects) <= set(body.subjects):
        raise PolicyDenied(f"approval {ref} does not cover every subject of this check", approval_ref=ref)
    if body.max_subjects is not None and len(subjects) > body.max_subjects:
        raise PolicyDenied(f"approval {ref} covers at most {body.max_subjects} subjects", approval_ref=ref)


def _validity(body: ApprovalBody, agency: str, now: datetime) -> None:
    ref = body.ref
    if agency not in body.agencies:  # first: another agency learns nothing of the approval's state
        raise PolicyDenied(f"approval {ref} was given to another agency, not '{agency}'", approval_ref=ref)
    if not body.valid_from <= now:
        raise PolicyDenied(f"approval {ref} is not yet valid", approval_ref=ref)
    if now >= body.valid_until:
        raise PolicyDenied(f"approval {ref} has expired", approval_ref=ref)


def in_training_scope(body: ApprovalBody, *, agency: str, datasets: Sequence[str], job_id: str, now: datetime) -> None:
    """Raise PolicyDenied unless the signed scope covers this training job: its datasets, its id
    (the approval's case ids or case-id prefix name jobs), the agency, now."""
    ref = body.ref
    _validity(body, agency, now)
    if not body.datasets:  # an approval of checks (programs only) never stands for a training job
        raise PolicyDenied(f"approval {ref} approves checks, not training: it names no dataset", approval_ref=ref)
    uncovered = sorted(set(datasets) - set(body.datasets))
    if uncovered:
        raise PolicyDenied(f"approval {ref} does not cover dataset '{uncovered[0]}'", approval_ref=ref)
    if not body.covers_case(job_id):
        raise PolicyDenied(f"approval {ref} does not cover training job '{job_id}'", approval_ref=ref)


def _registered(record: ApprovalRecord | None, ref: str, now: datetime, agency: str) -> ApprovalRecord:
    if record is None:
        shown = ref if len(ref) <= 64 else ref[:61] + "..."
        raise PolicyDenied(
            f"approval_ref '{shown}' names no registered approval: an approval is registered by its approver "
            "(xgate approval grant), never typed by the requester"
        )
    if agency not in record.body.agencies:  # before its state: another agency learns nothing of it
        raise PolicyDenied(f"approval {ref} was given to another agency, not '{agency}'", approval_ref=ref)
    # Any revocation on record is final, whenever it was stamped: a replica whose clock runs ahead
    # stamps it after `now`, and it must be honoured at once all the same.
    if record.revoked_at is not None:
        raise PolicyDenied(f"approval {ref} was revoked by its approver", approval_ref=ref)
    return record


def evaluate_training(
    record: ApprovalRecord | None, ref: str, *, agency: str, datasets: Sequence[str], job_id: str, now: datetime
) -> None:
    """Raise PolicyDenied unless the registered approval `ref` covers this training job now (pure)."""
    in_training_scope(
        _registered(record, ref, now, agency).body, agency=agency, datasets=datasets, job_id=job_id, now=now
    )


def evaluate(
    record: ApprovalRecord | None,
    ref: str,
    *,
    agency: str,
    program: str,
    case_id: str,
    subjects: Sequence[str],
    now: datetime,
) -> None:
    """Raise PolicyDenied unless the registered approval `ref` covers this request now (pure)."""
    record = _registered(record, ref, now, agency)
    in_scope(record.body, agency=agency, program=program, case_id=case_id, subjects=subjects, now=now)
    limit = record.body.max_subjects
    if limit is not None and record.uses + len(subjects) > limit:
        raise PolicyDenied(
            f"approval {ref}: its {limit} subjects are used up ({record.uses} checked)", approval_ref=ref
        )


def check_approval_artefact(
    text: str,
    approvers: Mapping[str, Approver],
    *,
    ref: str,
    agency: str,
    program: str,
    case_id: str,
    subjects: Sequence[str],
    now: datetime,
) -> None:
    """A node's check of the approval it was forwarded: signed by a registered approver, in scope now."""
    if not text:
        raise PolicyDenied("approval refused: the request carries no signed approval artefact")
    _, body = parse_approval(text, approvers)
    if body.ref != ref:
        raise PolicyDenied("approval refused: the artefact is for another approval reference")
    in_scope(body, agency=agency, program=program, case_id=case_id, subjects=subjects, now=now)


_DDL = """
    CREATE TABLE IF NOT EXISTS approvals (
        ref TEXT PRIMARY KEY, approver TEXT NOT NULL, agencies TEXT NOT NULL, artefact TEXT NOT NULL,
        uses INTEGER NOT NULL DEFAULT 0, revoked_at TEXT, created_at TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS approval_reservations (
        id TEXT PRIMARY KEY, ref TEXT NOT NULL, subjects INTEGER NOT NULL)
"""
APPROVAL_MIGRATIONS = (
    Migration("approval_registry", 1, sqlite=_DDL, postgresql=_DDL),
    lease_migration("approval_registry", 2, "approval_reservations"),
)


class ApprovalRegistry(LeasedReservations):
    """Approvals in a SQLite file (embedded default) or the replicas' shared `Database`."""

    def __init__(
        self,
        store: Path | str | Database,
        approvers: Approvers | Mapping[str, Approver] | None = None,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        lease_clock: Callable[[], float] | None = None,
    ):
        """``lease_s``: how long a reservation may stay pending (longer than any check may take);
        ``lease_clock``: the database's clock unless given (tests)."""
        self.db: Database = open_store(store, APPROVAL_MIGRATIONS)
        self._approvers = approvers
        self._init_leases(lease_s, lease_clock)

    def approvers(self) -> Mapping[str, Approver]:
        if isinstance(self._approvers, Approvers):
            return self._approvers.current()
        return self._approvers or {}

    def register_signed(self, artefact: str, approver: str | None = None) -> ApprovalRecord:
        """Store an approval signed by a registered approver; `approver`: the registering user,
        whose own key must have signed it."""
        signer, body = parse_approval(artefact, self.approvers())
        if approver is not None and signer.signer.name != approver:
            raise PolicyDenied("approval refused: signed by another approver's key")
        with self.db.transaction(lock=[f"approval/{body.ref}"]) as tx:
            if tx.execute("SELECT 1 FROM approvals WHERE ref = ?", (body.ref,)).fetchone():
                raise InvalidInput(f"approval {body.ref} is already registered")
            tx.execute(
                "INSERT INTO approvals (ref, approver, agencies, artefact, created_at) VALUES (?, ?, ?, ?, ?)",
                (body.ref, body.approver, ",".join(body.agencies), artefact, datetime.now(UTC).isoformat()),
            )
        return self.lookup(body.ref)

    def lookup(self, ref: str) -> ApprovalRecord:
        with self.db.read() as tx:
            record = self._get(tx, ref)
        if record is None:
            raise NotFound("no such approval")
        return record

    def _still_signed(self, record: ApprovalRecord | None) -> None:
        """The stored artefact against the approvers registered now: a key taken out of
        approvers.toml, or an approver's agencies or roles narrowed, no longer covers the approvals
        it signed before (the nodes would refuse them too, after the budgets were reserved)."""
        if record is not None and self._approvers is not None:
            parse_approval(record.artefact, self.approvers())

    def _find(self, ref: str) -> ApprovalRecord | None:
        try:
            return self.lookup(ref)
        except NotFound:
            return None

    def issued_by(self, approver: str) -> list[ApprovalRecord]:
        with self.db.read() as tx:
            refs = [
                str(r[0])
                for r in tx.execute(
                    "SELECT ref FROM approvals WHERE approver = ? ORDER BY created_at DESC LIMIT 1000", (approver,)
                ).fetchall()
            ]
            return [r for r in (self._get(tx, ref) for ref in refs) if r is not None]

    def revoke(self, ref: str, now: datetime | None = None) -> ApprovalRecord:
        at = (now or datetime.now(UTC)).astimezone(UTC)
        with self.db.transaction(lock=[f"approval/{ref}"]) as tx:
            if self._get(tx, ref) is None:
                raise NotFound("no such approval")
            tx.execute(
                "UPDATE approvals SET revoked_at = ? WHERE ref = ? AND revoked_at IS NULL", (at.isoformat(), ref)
            )
        return self.lookup(ref)

    def artefact(self, ref: str) -> str:
        return self.lookup(ref).artefact

    def verify(
        self, ref: str, *, agency: str, program: str, case_id: str, subjects: Sequence[str], now: datetime
    ) -> None:
        """Raise PolicyDenied unless the approval covers this request now; charges nothing."""
        if REF_RE.match(ref):
            self.reap(ref)  # a dead gateway's reserved subjects must not refuse this request
        record = self._find(ref)
        evaluate(record, ref, agency=agency, program=program, case_id=case_id, subjects=subjects, now=now)

    def verify_training(self, ref: str, *, agency: str, datasets: Sequence[str], job_id: str, now: datetime) -> None:
        """Raise PolicyDenied unless the approval covers this training job now."""
        record = self._find(ref)
        evaluate_training(record, ref, agency=agency, datasets=datasets, job_id=job_id, now=now)
        self._still_signed(record)

    def reserve(
        self,
        ref: str,
        *,
        agency: str,
        program: str,
        case_id: str,
        subjects: Sequence[str],
        now: datetime,
        owner: str | None = None,
    ) -> str:
        """Verify and take the use: for a count-scoped approval len(subjects), for one scoped by a
        subject list nothing is counted (0). Returns a reservation id to `commit` for an answer
        (which refuses if the approval was revoked meanwhile) or `release` for a failure."""
        with self.db.transaction(lock=[f"approval/{ref}"]) as tx:
            if REF_RE.match(ref):
                self._reap(tx, ref)
            record = self._get(tx, ref)
            evaluate(record, ref, agency=agency, program=program, case_id=case_id, subjects=subjects, now=now)
            assert record is not None  # evaluate refuses None
            self._still_signed(record)
            counted = len(subjects) if record.body.max_subjects is not None else 0
            reservation = "ars_" + secrets.token_urlsafe(16)
            tx.execute("UPDATE approvals SET uses = uses + ? WHERE ref = ?", (counted, ref))
            tx.execute(
                "INSERT INTO approval_reservations (id, ref, subjects, owner, lease_until) VALUES (?, ?, ?, ?, ?)",
                (
                    reservation,
                    ref,
                    counted,
                    RESERVATION_OWNER.get() if owner is None else owner,
                    self._now(tx) + self.lease_s,
                ),
            )
        return reservation

    def revoked(self, reservation: str) -> bool:
        """Whether the approval a pending reservation uses is revoked (a read, before anything is charged)."""
        return self._reserved_record_revoked("approval_reservations", reservation, self._get)

    def commit(self, reservation: str) -> bool:
        """Make the reserved use final: the check is about to be answered. False if it was not
        pending or its lease ran out (reaped, or given back now). Raises PolicyDenied, giving the
        subjects back, if the approval was revoked meanwhile: the answer must not be delivered."""
        with self.db.read() as tx:
            found = tx.execute("SELECT ref FROM approval_reservations WHERE id = ?", (reservation,)).fetchone()
        if found is None:
            return False
        ref = str(found[0])
        revoked = False
        with self.db.transaction(lock=[f"approval/{ref}"]) as tx:
            row = tx.execute(
                "SELECT ref, subjects, lease_until FROM approval_reservations WHERE id = ?", (reservation,)
            ).fetchone()
            if row is None:  # released or reaped meanwhile
                return False
            record = self._get(tx, ref)
            revoked = record is not None and record.revoked_at is not None
            if revoked or (row[2] is not None and float(row[2]) <= self._now(tx)):
                self._give_back(tx, reservation, row)
            else:
                tx.execute("DELETE FROM approval_reservations WHERE id = ?", (reservation,))
                return True
        if revoked:
            raise PolicyDenied(
                f"approval {ref} was revoked by its approver while the check ran; its answer is withheld",
                approval_ref=ref,
            )
        return False

    def reap(self, ref: str) -> int:
        """Give back the reserved subjects of one approval whose lease ran out, under its lock."""
        with self.db.transaction(lock=[f"approval/{ref}"]) as tx:
            return self._reap(tx, ref)

    def _reap(self, tx: Tx, ref: str) -> int:
        rows = tx.execute(
            "SELECT id, ref, subjects FROM approval_reservations WHERE ref = ? AND lease_until <= ?",
            (ref, self._now(tx)),
        ).fetchall()
        for row in rows:
            self._give_back(tx, str(row[0]), row[1:])
        if rows:
            log.warning("approval_reservations_reaped", reservations=len(rows), approval_ref=ref)
        return len(rows)

    def release_owner(self, owner: str) -> int:
        """Give back every pending reservation of one owner (a dead attempt whose claim was taken over)."""
        return self._release_owned("approval_reservations", owner, self.release)

    @staticmethod
    def _give_back(tx: Tx, reservation: str, row: Any) -> bool:
        """Within the approval's lock: undo one reservation (its row first, so a racing commit or
        release finds it gone)."""
        if tx.execute("DELETE FROM approval_reservations WHERE id = ?", (reservation,)).rowcount != 1:
            return False
        tx.execute("UPDATE approvals SET uses = uses - ? WHERE ref = ? AND uses >= ?", (row[1], row[0], row[1]))
        return True

    def release(self, reservation: str) -> bool:
        """Give the reserved subjects back (idempotent; a storage error keeps them taken)."""
        try:
            with self.db.read() as tx:
                found = tx.execute("SELECT ref FROM approval_reservations WHERE id = ?", (reservation,)).fetchone()
            if found is None:
                return False
            with self.db.transaction(lock=[f"approval/{found[0]}"]) as tx:
                row = tx.execute(
                    "SELECT ref, subjects FROM approval_reservations WHERE id = ?", (reservation,)
                ).fetchone()
                if row is None:
                    return False
                return self._give_back(tx, reservation, row)
        except (sqlite3.Error, StoreUnavailable) as exc:
            log.warning("approval_release_failed", error=type(exc).__name__)
            return False

    @staticmethod
    def _get(tx: Tx, ref: str) -> ApprovalRecord | None:
        if not REF_RE.match(ref):
            return None
        row = tx.execute(
            "SELECT artefact, uses, revoked_at, created_at FROM approvals WHERE ref = ?", (ref,)
        ).fetchone()
        if row is None:
            return None
        outer = json.loads(str(row[0]))
        return ApprovalRecord(
            body=ApprovalBody.model_validate(outer["body"], context={"stored": True}),
            artefact=str(row[0]),
            uses=int(row[1]),
            revoked_at=datetime.fromisoformat(row[2]) if row[2] else None,
            created_at=datetime.fromisoformat(row[3]),
        )
