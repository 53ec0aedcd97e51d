"""Probing budgets and the privacy (ε) ledger, enforced atomically in SQLite.

Probing budget: how often one subject may be evaluated for one program by one requesting agency
(the agreement says e.g. "at most 3 per 30 days"), over a sliding window. A batch is
all-or-nothing: inside one `BEGIN IMMEDIATE` transaction we count every subject's recent
evaluations and either record one more for each or refuse the whole batch, so concurrent callers
can never push anyone over the cap.

Charged only for answers: `reserve` records the batch's evaluations exactly like `consume`
(counted against the cap at once, so concurrent callers can never push anyone over it) and
returns a reservation id; `commit` makes it final when the check was answered; `release`
removes those evaluations again when the check failed for a reason that is not the requester's
(node down, timeout, gateway error, a refusal further on). Every reservation carries a lease (an
expiry by the database's clock, longer than any check may take) and its owner (the check's
Idempotency-Key claim): one never committed nor released (the gateway died mid-check) is given
back by the reaper, which runs under the same locks whenever the scope is reserved or read
(`reap`), and by a replica taking the dead attempt's claim over (`release_owner`). A commit of a
reservation whose lease ran out fails (returns False): the check then refuses to answer.

Privacy ledger: total ε spent per training dataset, capped; idempotent per job id.
"""

from __future__ import annotations

import json
import math
import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from policies.leases import LeasedReservations
from policies.types import DEFAULT_LEASE_S, RESERVATION_OWNER, BudgetRule, EpsilonReceipt
from xgate.db import (
    Database,
    Migration,
    SqliteDatabase,
    Tx,
    lease_migration,
    migrate,
    open_store,
    require_current,
)
from xgate.errors import BudgetExhausted, InvalidInput, StoreUnavailable
from xgate.logging import get_logger

log = get_logger("xgate.policies.budgets")

SAMPLE = 3  # how many over-budget pseudonyms a refusal names (counts are always complete)


@dataclass(frozen=True)
class BudgetReceipt:
    subjects: int
    max_checks: int
    window_days: int
    reservation: str = ""  # set by ProbeBudget.reserve: commit or release it


def release_windows(
    history: Mapping[str, Sequence[float]], subjects: Sequence[str], at: float
) -> dict[str, list[float]]:
    """Pure: each subject's window with one evaluation recorded at `at` taken out again.

    Evaluations at one instant are interchangeable for counting, so removing any one of them
    releases exactly one. A subject without such an entry (its window was rewritten meanwhile)
    is left as it is.
    """
    out: dict[str, list[float]] = {}
    for s in subjects:
        times = list(history.get(s, ()))
        if at in times:
            times.remove(at)
        out[s] = times
    return out


def charge_windows(
    history: Mapping[str, Sequence[float]], subjects: Sequence[str], rule: BudgetRule, now: float
) -> tuple[dict[str, list[float]], list[tuple[str, float]]]:
    """Pure budget decision for one batch (subjects already de-duplicated).

    ``history`` holds each subject's recorded evaluation times. Returns the new window of every
    subject (times still inside the window plus ``now``, newest first, at most ``max_checks``),
    and the subjects already at the cap with the time their oldest counted evaluation expires.
    A non-empty second list means the whole batch is refused.
    """
    cutoff = now - rule.window_seconds
    windows: dict[str, list[float]] = {}
    over: list[tuple[str, float]] = []
    for s in subjects:
        recent = sorted((t for t in history.get(s, ()) if t > cutoff), reverse=True)
        if len(recent) >= rule.max_checks:
            # The max_checks-th most recent evaluation expiring is what frees one slot.
            over.append((s, recent[rule.max_checks - 1] + rule.window_seconds))
        else:
            windows[s] = [now, *recent]
    return windows, sorted(over)


BUDGET_MIGRATIONS = (
    Migration(
        "probe_budget",
        1,
        sqlite="""
            CREATE TABLE IF NOT EXISTS probe_windows (
                program TEXT NOT NULL, agency TEXT NOT NULL, subject TEXT NOT NULL,
                times TEXT NOT NULL, last_at REAL NOT NULL,
                PRIMARY KEY (program, agency, subject)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS probe_reservations (
                id TEXT PRIMARY KEY, program TEXT NOT NULL, agency TEXT NOT NULL, at REAL NOT NULL,
                subjects TEXT NOT NULL)
        """,
        postgresql="""
            CREATE TABLE IF NOT EXISTS probe_windows (
                program TEXT NOT NULL, agency TEXT NOT NULL, subject TEXT NOT NULL,
                times TEXT NOT NULL, last_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (program, agency, subject));
            CREATE TABLE IF NOT EXISTS probe_reservations (
                id TEXT PRIMARY KEY, program TEXT NOT NULL, agency TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
                subjects TEXT NOT NULL)
        """,
    ),
    lease_migration("probe_budget", 2, "probe_reservations"),
)
# A reservation is still pending with no lease (written by an earlier version) or one not yet run
# out; a reap gives back at most 100 expired ones (the rest at the next).


# Batches travel as one JSON array parameter; the statements differ only in how each dialect
# turns it into rows (subjects as text; (subject, times, last_at) triples).
_SUBJECTS = {
    "sqlite": "SELECT value FROM json_each(?)",
    "postgresql": "SELECT jsonb_array_elements_text(CAST(? AS jsonb))",
}
_WINDOW_ROWS = {
    "sqlite": "SELECT ?, ?, value ->> 0, value ->> 1, value ->> 2 FROM json_each(?) WHERE true",
    "postgresql": "SELECT ?, ?, value ->> 0, value ->> 1, CAST(value ->> 2 AS DOUBLE PRECISION)"
    " FROM jsonb_array_elements(CAST(? AS jsonb)) AS value",
}
_SELECT_WINDOWS = {
    d: "SELECT subject, times FROM probe_windows WHERE program = ? AND agency = ? AND subject IN (" + rows + ")"  # noqa: S608  # constant fragments, no input
    for d, rows in _SUBJECTS.items()
}
_DELETE_WINDOWS = {
    d: "DELETE FROM probe_windows WHERE program = ? AND agency = ? AND subject IN (" + rows + ")"  # noqa: S608
    for d, rows in _SUBJECTS.items()
}
_UPSERT_WINDOWS = {
    d: "INSERT INTO probe_windows (program, agency, subject, times, last_at) "
    + rows
    + " ON CONFLICT (program, agency, subject) DO UPDATE SET times = excluded.times, last_at = excluded.last_at"
    for d, rows in _WINDOW_ROWS.items()
}


class ProbeBudget(LeasedReservations):
    """Per (subject pseudonym, program, requesting agency) evaluation counts in a sliding window.

    One row per subject and scope holds the times of its evaluations still inside the window (never
    more than the cap), so a batch costs one read and one upsert per subject however long the
    history is. Rows whose window has emptied are pruned at most once per hour per scope.

    Storage: a SQLite file (embedded default; its schema is applied at open) or a shared
    `Database` (PostgreSQL, replicated mode; `xgate gateway migrate` applies the schema). A charge
    locks every subject of its batch (xgate/db.py lock keys), so replicas charging the same
    subject serialise on it and nobody is ever pushed over the cap.
    """

    PRUNE_EVERY_S = 3600.0

    def __init__(
        self,
        store: Path | str | Database,
        clock: Callable[[], datetime] | None = None,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        lease_clock: Callable[[], float] | None = None,
    ) -> None:
        """``lease_s``: how long a reservation may stay pending (longer than any check may take);
        ``lease_clock``: the database's clock unless given (tests)."""
        self.db: Database = open_store(store, BUDGET_MIGRATIONS)
        if isinstance(store, (str, Path)):
            self._fold_legacy_table()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._pruned: dict[tuple[str, str], float] = {}
        self._init_leases(lease_s, lease_clock)

    def _fold_legacy_table(self) -> None:
        """Fold the one-row-per-evaluation table of earlier (SQLite-only) versions into windows."""
        with self.db.transaction() as tx:
            if tx.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='probes'").fetchone():
                tx.execute(
                    """INSERT OR REPLACE INTO probe_windows
                       SELECT program, agency, subject, group_concat(at, ','), MAX(at) FROM probes
                       GROUP BY program, agency, subject"""
                )
                tx.execute("DROP TABLE probes")

    @staticmethod
    def _locks(program: str, agency: str, subjects: Sequence[str]) -> list[str]:
        return [f"budget/{program}/{agency}/{s}" for s in subjects]

    def consume(
        self,
        subjects: Sequence[str],
        program: str,
        agency: str,
        rule: BudgetRule,
        now: datetime | None = None,
    ) -> BudgetReceipt:
        """Record one evaluation per subject, or refuse the whole batch with BudgetExhausted."""
        return self._charge(subjects, program, agency, rule, now, reserve=False)

    def reserve(
        self,
        subjects: Sequence[str],
        program: str,
        agency: str,
        rule: BudgetRule,
        now: datetime | None = None,
        owner: str | None = None,
    ) -> BudgetReceipt:
        """Like `consume`, but revocable: the receipt names a reservation to commit or release.
        ``owner``: who holds it (default: the check's, `RESERVATION_OWNER`)."""
        return self._charge(subjects, program, agency, rule, now, reserve=True, owner=owner)

    def commit(self, reservation: str) -> bool:
        """Make a reservation final (the check was answered). False if it was not pending, its
        lease ran out or it was reaped: the caller must then not answer (fail closed)."""
        with self.db.transaction() as tx:
            deleted = tx.execute(
                "DELETE FROM probe_reservations WHERE id = ? AND (lease_until IS NULL OR lease_until > ?)",
                (reservation, self._now(tx)),
            )
            return bool(deleted.rowcount == 1)

    def reap(self, program: str | None = None, agency: str | None = None) -> int:
        """Give back reservations whose lease ran out (their gateway died mid-check), of one scope
        or all; each under its subjects' locks, like `release`. Returns how many. In batches of 100
        until none is left (a crash of many gateways can leave more, and one left over would refuse
        its subject as if its budget were spent), stopping if a batch gives nothing back."""
        reaped = 0
        while True:
            with self.db.read() as tx:
                rows = tx.execute(
                    "SELECT id FROM probe_reservations WHERE lease_until <= ?"
                    " AND (CAST(? AS TEXT) IS NULL OR (program = ? AND agency = ?)) LIMIT 100",
                    (self._now(tx), program, program, agency),
                ).fetchall()
            batch = sum(self._settle_release(str(r[0]), expired_only=True) for r in rows)
            reaped += batch
            if len(rows) < 100 or not batch:
                break
        if reaped:
            log.warning("budget_reservations_reaped", reservations=reaped, program=program, agency=agency)
        return reaped

    def release_owner(self, owner: str) -> int:
        """Give back every pending reservation of one owner (a dead attempt whose claim was taken over)."""
        return self._release_owned("probe_reservations", owner, self.release)

    def release(self, reservation: str) -> bool:
        """Give a pending reservation's evaluations back. False if it was not pending (idempotent)
        or could not be released (a storage error: the reservation then stays counted, the
        conservative side, and the check's own error is what the caller sees)."""
        return self._settle_release(reservation)

    def _settle_release(self, reservation: str, expired_only: bool = False) -> bool:
        try:
            return self._release(reservation, expired_only)
        except (sqlite3.Error, StoreUnavailable) as exc:
            log.warning("budget_release_failed", error=type(exc).__name__)
            return False

    def _release(self, reservation: str, expired_only: bool = False) -> bool:
        with self.db.read() as tx:
            row = tx.execute(
                "SELECT program, agency, subjects FROM probe_reservations WHERE id = ?", (reservation,)
            ).fetchone()
        if row is None:
            return False
        program, agency, subjects = str(row[0]), str(row[1]), list(json.loads(row[2]))
        with self.db.transaction(lock=self._locks(program, agency, subjects)) as tx:
            row = tx.execute("SELECT at FROM probe_reservations WHERE id = ?", (reservation,)).fetchone()
            if row is None:  # committed or released meanwhile, by this process or another
                return False
            at = float(row[0])
            # The row first: a commit racing this release (PostgreSQL) then finds it gone, or this
            # release finds it committed, never both.
            deleted = (
                tx.execute(
                    "DELETE FROM probe_reservations WHERE id = ? AND lease_until <= ?", (reservation, self._now(tx))
                )
                if expired_only
                else tx.execute("DELETE FROM probe_reservations WHERE id = ?", (reservation,))
            )
            if deleted.rowcount != 1:
                return False
            windows = release_windows(self._history(tx, subjects, program, agency), subjects, at)
            self._write_windows(tx, program, agency, {s: w for s, w in windows.items() if w})
            emptied = json.dumps([s for s, w in windows.items() if not w])
            tx.execute(
                _DELETE_WINDOWS[tx.dialect],
                (program, agency, emptied),
            )
        return True

    def pending(self) -> int:
        """How many reservations are neither committed nor released."""
        with self.db.read() as tx:
            return int(tx.execute("SELECT COUNT(*) FROM probe_reservations").fetchone()[0])

    def _charge(
        self,
        subjects: Sequence[str],
        program: str,
        agency: str,
        rule: BudgetRule,
        now: datetime | None,
        reserve: bool,
        owner: str | None = None,
    ) -> BudgetReceipt:
        unique = list(dict.fromkeys(subjects))
        if not unique:
            raise InvalidInput("no subjects to charge")
        t = (now or self._clock()).timestamp()
        self.reap(program, agency)  # a dead gateway's reservations must not count against this batch
        with self.db.transaction(lock=self._locks(program, agency, unique)) as tx:
            history = self._history(tx, unique, program, agency)
            windows, over = charge_windows(history, unique, rule, t)
            if over:  # raising rolls the transaction back: nothing of this batch is recorded
                raise self._refusal(over, len(unique), program, agency, rule, t)
            self._write_windows(tx, program, agency, windows)
            reservation = ""
            if reserve:
                reservation = "rsv_" + secrets.token_urlsafe(16)
                tx.execute(
                    "INSERT INTO probe_reservations (id, program, agency, at, subjects, owner, lease_until)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        reservation,
                        program,
                        agency,
                        t,
                        json.dumps(unique),
                        RESERVATION_OWNER.get() if owner is None else owner,
                        self._now(tx) + self.lease_s,
                    ),
                )
            if t - self._pruned.get((program, agency), -math.inf) >= self.PRUNE_EVERY_S:
                self._pruned[(program, agency)] = t
                # Only windows that are wholly past the cutoff: no lock is needed to drop them.
                tx.execute(
                    "DELETE FROM probe_windows WHERE program = ? AND agency = ? AND last_at <= ?",
                    (program, agency, t - rule.window_seconds),
                )
                # a reservation older than the window can no longer be told from its evaluations
                tx.execute("DELETE FROM probe_reservations WHERE at <= ?", (t - rule.window_seconds,))
        return BudgetReceipt(len(unique), rule.max_checks, rule.window_days, reservation)

    @staticmethod
    def _write_windows(tx: Tx, program: str, agency: str, windows: Mapping[str, Sequence[float]]) -> None:
        if not windows:
            return
        rows = json.dumps([[s, ",".join(map(repr, w)), max(w)] for s, w in windows.items()])
        tx.execute(
            _UPSERT_WINDOWS[tx.dialect],
            (program, agency, rows),
        )

    def used(self, subject: str, program: str, agency: str, rule: BudgetRule, now: datetime | None = None) -> int:
        self.reap(program, agency)
        cutoff = (now or self._clock()).timestamp() - rule.window_seconds
        with self.db.read() as tx:
            times = self._history(tx, [subject], program, agency).get(subject, [])
        return sum(1 for at in times if at > cutoff)

    @staticmethod
    def _history(tx: Tx, subjects: list[str], program: str, agency: str) -> dict[str, list[float]]:
        # One statement for the whole batch (a JSON array parameter), not one query per subject.
        rows = tx.execute(
            _SELECT_WINDOWS[tx.dialect],
            (program, agency, json.dumps(subjects)),
        ).fetchall()
        return {str(s): [float(x) for x in str(times).split(",")] for s, times in rows}

    @staticmethod
    def _refusal(
        over: list[tuple[str, float]], total: int, program: str, agency: str, rule: BudgetRule, now: float
    ) -> BudgetExhausted:
        resets = max(at for _, at in over)
        resets_at = datetime.fromtimestamp(resets, UTC).isoformat(timespec="seconds")
        return BudgetExhausted(
            f"probing budget exhausted for {len(over)} of {total} subjects: at most {rule.max_checks} evaluations "
            f"per subject per {rule.window_days} days for program '{program}' requested by '{agency}'; "
            f"the whole batch can run again at {resets_at}",
            over_subjects=len(over),
            batch_subjects=total,
            sample_pseudonyms=[s for s, _ in over[:SAMPLE]],
            resets_at=resets_at,
            retry_after_s=max(1, math.ceil(resets - now)),
            max_checks=rule.max_checks,
            window_days=rule.window_days,
            program=program,
            agency=agency,
            policy_id=rule.policy_id,
        )


@dataclass(frozen=True)
class LedgerEntry:
    dataset: str
    job_id: str
    epsilon: float
    spent: float  # total for the dataset after this job
    cap: float
    replayed: bool  # True when this job id had already been recorded

    @property
    def remaining(self) -> float:
        return max(0.0, self.cap - self.spent)


_EPS_TOLERANCE = 1e-9


_SPENDS_DDL = """
    CREATE TABLE IF NOT EXISTS spends (
        dataset TEXT NOT NULL, job_id TEXT NOT NULL, epsilon {real} NOT NULL, at TEXT NOT NULL,
        PRIMARY KEY (dataset, job_id));
"""
# PostgreSQL's REAL is 4 bytes: an ε sum near a cap must not lose precision there.
PRIVACY_LEDGER_MIGRATIONS = (
    Migration(
        "privacy_ledger",
        1,
        sqlite=_SPENDS_DDL.format(real="REAL"),
        postgresql=_SPENDS_DDL.format(real="DOUBLE PRECISION"),
    ),
    # Each charge's delta, summed per dataset against a delta cap as epsilon is against its cap.
    # Charges recorded before count 0 (they were never bounded): the cap applies from the upgrade on.
    Migration(
        "privacy_ledger",
        2,
        sqlite="ALTER TABLE spends ADD COLUMN delta REAL NOT NULL DEFAULT 0",
        postgresql="ALTER TABLE spends ADD COLUMN IF NOT EXISTS delta DOUBLE PRECISION NOT NULL DEFAULT 0",
    ),
)


@dataclass(frozen=True)
class Spend:
    dataset: str
    job_id: str
    epsilon: float
    at: str


class PrivacyLedger:
    """Total differential-privacy ε spent per dataset across training jobs: a SQLite file (a node's
    ledger, the embedded gateway) or the replicas' shared database, where every replica charges
    the same totals (a dataset's cap holds across replicas, not per replica).

    δ too: a charge may carry its δ and the dataset's δ cap (a 6-tuple in `spend_each`, 5 in
    `spend_all`); the δs of a dataset's charges add up against that cap like its ε (basic
    composition), so many jobs each asking a large δ cannot pile up a likely failure of the
    guarantee. A charge without them spends δ 0 (ε-only releases such as label DP)."""

    # The δ cap of a dataset whose administrator configured none: 100 jobs (or runs) at the
    # documented δ = 1e-6, 10 at 1e-5. Each job's δ is bounded against the dataset's size besides
    # (federated/dp_sgd.py `delta_problem`).
    DEFAULT_DELTA_CAP = 1e-4

    def __init__(self, store: Path | str | Database) -> None:
        self.db: Database
        self.path: Path | None = None
        if isinstance(store, (str, Path)):
            self.path = Path(store)
            self.db = SqliteDatabase(self.path)
            migrate(self.db, PRIVACY_LEDGER_MIGRATIONS)
        else:
            self.db = store
            require_current(self.db, PRIVACY_LEDGER_MIGRATIONS)

    def spend(self, dataset: str, job_id: str, epsilon: float, cap: float) -> LedgerEntry:
        return self.spend_all(job_id, [(dataset, epsilon, cap)])[0]

    def spend_all(
        self, job_id: str, charges: Sequence[tuple[str, float, float] | tuple[str, float, float, float, float]]
    ) -> list[LedgerEntry]:
        """Charge one job against several datasets, all or nothing: (dataset, epsilon, cap) each, or
        (dataset, epsilon, cap, delta, delta_cap).

        A job touching two datasets must not spend one budget and then be refused on the other.
        """
        if not charges or len({c[0] for c in charges}) != len(charges):
            raise InvalidInput("charges must name each dataset once")
        return self.spend_each([(job_id, *c) for c in charges])

    def spend_each(
        self,
        charges: Sequence[tuple[str, str, float, float] | tuple[str, str, float, float, float, float]],
    ) -> list[LedgerEntry]:
        """Several charges, each under its own key, all or nothing: (key, dataset, epsilon, cap) each,
        or (key, dataset, epsilon, cap, delta, delta_cap).

        Each key is charged once per dataset (a replayed key is not charged again); charges on one
        dataset add up against its caps in order.
        """
        if not charges or len({(c[0], c[1]) for c in charges}) != len(charges):
            raise InvalidInput("charges must name each (key, dataset) once")
        full = [(*c, 0.0, self.DEFAULT_DELTA_CAP) if len(c) == 4 else c for c in charges]
        for key, _, epsilon, cap, delta, delta_cap in full:
            if not key or len(key) > 128:
                raise InvalidInput("a spend key (job id) must be 1..128 characters")
            if not (math.isfinite(epsilon) and epsilon > 0):
                raise InvalidInput("epsilon must be a positive finite number")
            if not (math.isfinite(cap) and cap > 0):
                raise InvalidInput("cap must be a positive finite number")
            if not (math.isfinite(delta) and 0 <= delta < 1 and math.isfinite(delta_cap) and 0 < delta_cap < 1):
                raise InvalidInput("delta must be in [0, 1) and its cap in (0, 1)")
        entries = []
        # Locked per dataset: two replicas charging one dataset serialise; raising rolls back every charge.
        with self.db.transaction(lock=sorted({f"privacy/{c[1]}" for c in full})) as tx:
            for key, dataset, epsilon, cap, delta, delta_cap in full:
                entries.append(self._charge(tx, dataset, key, epsilon, cap, delta, delta_cap))
        return entries

    @staticmethod
    def _charge(
        tx: Tx, dataset: str, job_id: str, epsilon: float, cap: float, delta: float = 0.0, delta_cap: float = 1.0
    ) -> LedgerEntry:
        prior = tx.execute("SELECT epsilon FROM spends WHERE dataset = ? AND job_id = ?", (dataset, job_id)).fetchone()
        total, total_delta = (
            float(v)
            for v in tx.execute(
                "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM spends WHERE dataset = ?", (dataset,)
            ).fetchone()
        )
        if prior is not None:
            if abs(float(prior[0]) - epsilon) > _EPS_TOLERANCE:
                raise InvalidInput(f"job '{job_id}' was already recorded with a different epsilon")
            return LedgerEntry(dataset, job_id, epsilon, total, cap, replayed=True)
        if total + epsilon > cap + _EPS_TOLERANCE:
            raise BudgetExhausted(
                f"privacy budget of dataset '{dataset}' exhausted: spent {total:g} of {cap:g}, job asks {epsilon:g}",
                dataset=dataset,
                spent=total,
                cap=cap,
                requested=epsilon,
                resets_at=None,  # a privacy budget never resets
            )
        if delta > 0 and total_delta + delta > delta_cap * (1 + _EPS_TOLERANCE):
            raise BudgetExhausted(
                f"privacy budget of dataset '{dataset}' exhausted for delta: spent {total_delta:g} of its delta"
                f" cap {delta_cap:g}, job asks {delta:g}",
                dataset=dataset,
                spent_delta=total_delta,
                delta_cap=delta_cap,
                requested_delta=delta,
                resets_at=None,
            )
        tx.execute(
            "INSERT INTO spends (dataset, job_id, epsilon, at, delta) VALUES (?, ?, ?, ?, ?)",
            (dataset, job_id, epsilon, datetime.now(UTC).isoformat(timespec="seconds"), delta),
        )
        return LedgerEntry(dataset, job_id, epsilon, total + epsilon, cap, replayed=False)

    def spent(self, dataset: str) -> float:
        with self.db.read() as tx:
            row = tx.execute("SELECT COALESCE(SUM(epsilon), 0) FROM spends WHERE dataset = ?", (dataset,)).fetchone()
        return float(row[0])

    def spent_delta(self, dataset: str) -> float:
        """The δ of every charge on the dataset, summed."""
        with self.db.read() as tx:
            row = tx.execute("SELECT COALESCE(SUM(delta), 0) FROM spends WHERE dataset = ?", (dataset,)).fetchone()
        return float(row[0])

    def spends(self) -> list[Spend]:
        """Every charge, oldest first (the console's Training page)."""
        with self.db.read() as tx:
            rows = tx.execute("SELECT dataset, job_id, epsilon, at FROM spends ORDER BY at, dataset, job_id").fetchall()
        return [Spend(str(d), str(j), float(e), str(a)) for d, j, e, a in rows]


COHORT_PRIVACY_MIGRATIONS = (
    Migration(
        "cohort_privacy",
        1,
        sqlite="""
            CREATE TABLE IF NOT EXISTS cohort_epsilon (
                program TEXT NOT NULL, agency TEXT NOT NULL, period INTEGER NOT NULL, spent REAL NOT NULL,
                PRIMARY KEY (program, agency, period)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS cohort_epsilon_reservations (
                id TEXT PRIMARY KEY, program TEXT NOT NULL, agency TEXT NOT NULL, period INTEGER NOT NULL,
                epsilon REAL NOT NULL)
        """,
        postgresql="""
            CREATE TABLE IF NOT EXISTS cohort_epsilon (
                program TEXT NOT NULL, agency TEXT NOT NULL, period BIGINT NOT NULL,
                spent DOUBLE PRECISION NOT NULL, PRIMARY KEY (program, agency, period));
            CREATE TABLE IF NOT EXISTS cohort_epsilon_reservations (
                id TEXT PRIMARY KEY, program TEXT NOT NULL, agency TEXT NOT NULL, period BIGINT NOT NULL,
                epsilon DOUBLE PRECISION NOT NULL)
        """,
    ),
    lease_migration("cohort_privacy", 2, "cohort_epsilon_reservations"),
)


class CohortPrivacyBudget(LeasedReservations):
    """The cohort (bronze) view's ε budget per (program, requesting agency) and period (the program's epoch).

    Each cohort query spends ε per criterion times its criteria (exchange/cohort.py). Like the
    probing budget it is reserved before the fan-out (refused when the period's cap would be
    passed), committed when the check is answered and released when it fails for a reason that is
    not the requester's; a reservation never settled (the gateway died mid-check) is given back
    once its lease runs out, under the scope's lock, by the next reservation or read of the scope;
    a commit after that fails. Atomic under concurrency: SQLite's write lock, or on PostgreSQL an
    advisory lock on the scope.
    """

    def __init__(
        self,
        store: Path | str | Database,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        lease_clock: Callable[[], float] | None = None,
    ) -> None:
        self.db: Database = open_store(store, COHORT_PRIVACY_MIGRATIONS)
        self._init_leases(lease_s, lease_clock)

    @staticmethod
    def _lock(program: str, agency: str) -> list[str]:
        return [f"epsilon/{program}/{agency}"]

    def reserve(
        self,
        program: str,
        agency: str,
        period: int,
        epsilon: float,
        cap: float,
        renews: tuple[float, float] | None = None,
        owner: str | None = None,
    ) -> EpsilonReceipt:
        """Hold `epsilon` of the period's `cap`, or refuse with BudgetExhausted (nothing recorded).

        `renews`: (now, when the next period starts) in Unix seconds, for the refusal's Retry-After."""
        if not (math.isfinite(epsilon) and epsilon > 0 and math.isfinite(cap) and cap > 0):
            raise InvalidInput("epsilon and its cap must be positive finite numbers")
        with self.db.transaction(lock=self._lock(program, agency)) as tx:
            self._reap(tx, program, agency)
            spent = self._spent(tx, program, agency, period)
            if spent + epsilon > cap + _EPS_TOLERANCE:
                timing = {}
                if renews is not None:
                    now, at = renews
                    timing = {
                        "resets_at": datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds"),
                        "retry_after_s": max(1, math.ceil(at - now)),
                    }
                raise BudgetExhausted(
                    f"privacy budget exhausted: agency '{agency}' has spent epsilon {spent:g} of {cap:g} for "
                    f"program '{program}' this period and a cohort query needs {epsilon:g}; the budget renews "
                    "with the program's next epoch",
                    program=program,
                    agency=agency,
                    spent=spent,
                    cap=cap,
                    requested=epsilon,
                    period=period,
                    **timing,
                )
            tx.execute(
                "INSERT INTO cohort_epsilon (program, agency, period, spent) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (program, agency, period) DO UPDATE SET spent = cohort_epsilon.spent + excluded.spent",
                (program, agency, period, epsilon),
            )
            reservation = "eps_" + secrets.token_urlsafe(16)
            tx.execute(
                "INSERT INTO cohort_epsilon_reservations (id, program, agency, period, epsilon, owner, lease_until)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    reservation,
                    program,
                    agency,
                    period,
                    epsilon,
                    RESERVATION_OWNER.get() if owner is None else owner,
                    self._now(tx) + self.lease_s,
                ),
            )
        return EpsilonReceipt(epsilon, spent + epsilon, cap, period, reservation)

    def commit(self, reservation: str) -> bool:
        """The query was answered: its ε stays spent. False if it was not pending or its lease ran
        out (reaped, or about to be): the caller must then not answer."""
        with self.db.transaction() as tx:
            deleted = tx.execute(
                "DELETE FROM cohort_epsilon_reservations WHERE id = ? AND (lease_until IS NULL OR lease_until > ?)",
                (reservation, self._now(tx)),
            )
            return bool(deleted.rowcount == 1)

    def _reap(self, tx: Tx, program: str, agency: str) -> int:
        """Under the scope's lock: give back the ε of reservations whose lease ran out."""
        rows = tx.execute(
            "SELECT id FROM cohort_epsilon_reservations WHERE program = ? AND agency = ? AND lease_until <= ?",
            (program, agency, self._now(tx)),
        ).fetchall()
        for (reservation,) in rows:
            self._give_back(tx, str(reservation), program, agency)
        if rows:
            log.warning("epsilon_reservations_reaped", reservations=len(rows), program=program, agency=agency)
        return len(rows)

    def reap(self) -> int:
        """Give back every reservation whose lease ran out (a timer, an operator)."""
        with self.db.read() as tx:
            scopes = tx.execute(
                "SELECT DISTINCT program, agency FROM cohort_epsilon_reservations WHERE lease_until <= ?",
                (self._now(tx),),
            ).fetchall()
        reaped = 0
        for program, agency in scopes:
            with self.db.transaction(lock=self._lock(str(program), str(agency))) as tx:
                reaped += self._reap(tx, str(program), str(agency))
        return reaped

    def release_owner(self, owner: str) -> int:
        """Give back every pending reservation of one owner (a dead attempt whose claim was taken over)."""
        return self._release_owned("cohort_epsilon_reservations", owner, self.release)

    def release(self, reservation: str) -> bool:
        """The query failed, not by the requester's doing: give its ε back. False if not pending or
        if storage failed (the ε then stays spent, the conservative side)."""
        try:
            return self._release(reservation)
        except (sqlite3.Error, StoreUnavailable) as exc:
            log.warning("epsilon_release_failed", error=type(exc).__name__)
            return False

    def _release(self, reservation: str) -> bool:
        with self.db.read() as tx:
            row = tx.execute(
                "SELECT program, agency FROM cohort_epsilon_reservations WHERE id = ?", (reservation,)
            ).fetchone()
        if row is None:
            return False
        program, agency = str(row[0]), str(row[1])
        with self.db.transaction(lock=self._lock(program, agency)) as tx:
            return self._give_back(tx, reservation, program, agency)

    @staticmethod
    def _give_back(tx: Tx, reservation: str, program: str, agency: str) -> bool:
        row = tx.execute(
            "SELECT period, epsilon FROM cohort_epsilon_reservations WHERE id = ?", (reservation,)
        ).fetchone()
        if row is None:  # committed or released meanwhile
            return False
        # The row first: a commit racing this release then finds it gone, or this finds it committed.
        if tx.execute("DELETE FROM cohort_epsilon_reservations WHERE id = ?", (reservation,)).rowcount != 1:
            return False
        tx.execute(
            "UPDATE cohort_epsilon SET spent = MAX(spent - ?, 0) WHERE program = ? AND agency = ? AND period = ?"
            if tx.dialect == "sqlite"
            else "UPDATE cohort_epsilon SET spent = GREATEST(spent - ?, 0) "
            "WHERE program = ? AND agency = ? AND period = ?",
            (float(row[1]), program, agency, int(row[0])),
        )
        return True

    def spent(self, program: str, agency: str, period: int) -> float:
        with self.db.transaction(lock=self._lock(program, agency)) as tx:
            self._reap(tx, program, agency)
            return self._spent(tx, program, agency, period)

    def pending(self) -> int:
        with self.db.read() as tx:
            return int(tx.execute("SELECT COUNT(*) FROM cohort_epsilon_reservations").fetchone()[0])

    @staticmethod
    def _spent(tx: Tx, program: str, agency: str, period: int) -> float:
        row = tx.execute(
            "SELECT spent FROM cohort_epsilon WHERE program = ? AND agency = ? AND period = ?",
            (program, agency, period),
        ).fetchone()
        return float(row[0]) if row is not None else 0.0
