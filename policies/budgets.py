"""Probing budgets and the privacy (ε) ledger, enforced atomically in SQLite.

Probing budget: how often one subject may be evaluated for one program by one requesting agency
(the agreement says e.g. "at most 3 per 30 days"), over a sliding window. A batch is
all-or-nothing: inside one `BEGIN IMMEDIATE` transaction we count every subject's recent
evaluations and either record one more for each or refuse the whole batch, so concurrent callers
can never push anyone over the cap.

Privacy ledger: total ε spent per training dataset, capped; idempotent per job id.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from policies.sqlite_tx import immediate, init_db
from policies.types import BudgetRule
from xgate.errors import BudgetExhausted, InvalidInput

SAMPLE = 3  # how many over-budget pseudonyms a refusal names (counts are always complete)


@dataclass(frozen=True)
class BudgetReceipt:
    subjects: int
    max_checks: int
    window_days: int


class ProbeBudget:
    """Per (subject pseudonym, program, requesting agency) evaluation counts in a sliding window."""

    def __init__(self, path: Path | str, clock: Callable[[], datetime] | None = None) -> None:
        self.path = Path(path)
        self._clock = clock or (lambda: datetime.now(UTC))
        init_db(
            self.path,
            """
            CREATE TABLE IF NOT EXISTS probes (
                program TEXT NOT NULL, agency TEXT NOT NULL, subject TEXT NOT NULL, at REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS probes_key ON probes (program, agency, subject, at);
            """,
        )

    def consume(
        self,
        subjects: Sequence[str],
        program: str,
        agency: str,
        rule: BudgetRule,
        now: datetime | None = None,
    ) -> BudgetReceipt:
        """Record one evaluation per subject, or refuse the whole batch with BudgetExhausted."""
        unique = list(dict.fromkeys(subjects))
        if not unique:
            raise InvalidInput("no subjects to charge")
        t = (now or self._clock()).timestamp()
        cutoff = t - rule.window_seconds
        with immediate(self.path) as conn:
            over = self._over(conn, unique, program, agency, rule, cutoff)
            if over:  # raising rolls the transaction back: nothing of this batch is recorded
                raise self._refusal(over, len(unique), program, agency, rule, t)
            conn.executemany(
                "INSERT INTO probes (program, agency, subject, at) VALUES (?, ?, ?, ?)",
                [(program, agency, s, t) for s in unique],
            )
            # Expired rows can never count again: keep the table small.
            conn.execute("DELETE FROM probes WHERE program = ? AND agency = ? AND at <= ?", (program, agency, cutoff))
        return BudgetReceipt(len(unique), rule.max_checks, rule.window_days)

    def used(self, subject: str, program: str, agency: str, rule: BudgetRule, now: datetime | None = None) -> int:
        cutoff = (now or self._clock()).timestamp() - rule.window_seconds
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            row = conn.execute(
                "SELECT COUNT(*) FROM probes WHERE program = ? AND agency = ? AND subject = ? AND at > ?",
                (program, agency, subject, cutoff),
            ).fetchone()
        finally:
            conn.close()
        return int(row[0])

    @staticmethod
    def _over(
        conn: sqlite3.Connection, subjects: list[str], program: str, agency: str, rule: BudgetRule, cutoff: float
    ) -> list[tuple[str, float]]:
        """(subject, time its budget frees up) for every subject already at the cap."""
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS batch (subject TEXT PRIMARY KEY)")
        conn.execute("DELETE FROM batch")
        conn.executemany("INSERT INTO batch (subject) VALUES (?)", [(s,) for s in subjects])
        rows = conn.execute(
            """
            WITH ranked AS (
                SELECT p.subject, p.at,
                       ROW_NUMBER() OVER (PARTITION BY p.subject ORDER BY p.at DESC) AS rn
                FROM probes p JOIN batch b ON b.subject = p.subject
                WHERE p.program = ? AND p.agency = ? AND p.at > ?)
            SELECT subject, at FROM ranked WHERE rn = ? ORDER BY subject
            """,
            (program, agency, cutoff, rule.max_checks),
        ).fetchall()
        # The max_checks-th most recent evaluation expiring is what frees one slot.
        return [(str(s), float(at) + rule.window_seconds) for s, at in rows]

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


class PrivacyLedger:
    """Total differential-privacy ε spent per dataset across training jobs."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        init_db(
            self.path,
            """
            CREATE TABLE IF NOT EXISTS spends (
                dataset TEXT NOT NULL, job_id TEXT NOT NULL, epsilon REAL NOT NULL, at TEXT NOT NULL,
                PRIMARY KEY (dataset, job_id));
            """,
        )

    def spend(self, dataset: str, job_id: str, epsilon: float, cap: float) -> LedgerEntry:
        return self.spend_all(job_id, [(dataset, epsilon, cap)])[0]

    def spend_all(self, job_id: str, charges: Sequence[tuple[str, float, float]]) -> list[LedgerEntry]:
        """Charge one job against several datasets, all or nothing: (dataset, epsilon, cap) each.

        A job touching two datasets must not spend one budget and then be refused on the other.
        """
        if not job_id or len(job_id) > 128:
            raise InvalidInput("job_id must be 1..128 characters")
        if not charges or len({c[0] for c in charges}) != len(charges):
            raise InvalidInput("charges must name each dataset once")
        for _, epsilon, cap in charges:
            if not (math.isfinite(epsilon) and epsilon > 0):
                raise InvalidInput("epsilon must be a positive finite number")
            if not (math.isfinite(cap) and cap > 0):
                raise InvalidInput("cap must be a positive finite number")
        entries = []
        with immediate(self.path) as conn:  # raising rolls back every charge of this job
            for dataset, epsilon, cap in charges:
                entries.append(self._charge(conn, dataset, job_id, epsilon, cap))
        return entries

    @staticmethod
    def _charge(conn: sqlite3.Connection, dataset: str, job_id: str, epsilon: float, cap: float) -> LedgerEntry:
        prior = conn.execute(
            "SELECT epsilon FROM spends WHERE dataset = ? AND job_id = ?", (dataset, job_id)
        ).fetchone()
        total = float(
            conn.execute("SELECT COALESCE(SUM(epsilon), 0) FROM spends WHERE dataset = ?", (dataset,)).fetchone()[0]
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
        conn.execute(
            "INSERT INTO spends (dataset, job_id, epsilon, at) VALUES (?, ?, ?, ?)",
            (dataset, job_id, epsilon, datetime.now(UTC).isoformat(timespec="seconds")),
        )
        return LedgerEntry(dataset, job_id, epsilon, total + epsilon, cap, replayed=False)

    def spent(self, dataset: str) -> float:
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            row = conn.execute("SELECT COALESCE(SUM(epsilon), 0) FROM spends WHERE dataset = ?", (dataset,)).fetchone()
        finally:
            conn.close()
        return float(row[0])
