"""Admission of a training job by each data-owning node, with a persistent privacy-budget ledger.

The provider decides: before a run starts every node holding job data must approve the job
(purpose allowed for its data; the job's epsilon fits the remaining per-dataset budget). The
default `LedgerAdmission` keeps its policy and ledger in one SQLite file at the node: a decision
is one IMMEDIATE transaction (atomic, survives restarts), approving the same job twice charges
once, and the ClientApp refuses to train unless this ledger holds an approval for the job.
The gateway's policy engine (policies/budgets.py) can replace it through the `Admission` protocol.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from federated import datasets
from federated.jobs import JobSpec
from xgate.errors import PolicyDenied

_SCHEMA = """
CREATE TABLE IF NOT EXISTS purposes (purpose TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS caps (dataset TEXT PRIMARY KEY, epsilon_cap REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, setting TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    job_id TEXT PRIMARY KEY, job_digest TEXT NOT NULL, agency TEXT NOT NULL, approved INTEGER NOT NULL,
    reason TEXT NOT NULL, epsilon REAL NOT NULL, decided_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS spend (
    dataset TEXT NOT NULL, job_id TEXT NOT NULL, epsilon REAL NOT NULL, PRIMARY KEY (dataset, job_id)
);
"""


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: str
    epsilon: float  # epsilon charged against each of the node's affected datasets


class Admission(Protocol):
    """Per-node admission: (job, agency) -> Decision. Must be idempotent per job_id."""

    def __call__(self, job: JobSpec, agency: str) -> Decision: ...


def job_epsilon(job: JobSpec) -> float:
    return job.dp.epsilon if job.dp is not None else 0.0


class LedgerAdmission:
    """Default admission: purposes, epsilon caps and the spend ledger in one SQLite file at the node."""

    def __init__(self, ledger: Path, store: Path) -> None:
        self.ledger = ledger
        self.store = store

    def _connect(self) -> sqlite3.Connection:
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.ledger, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        return conn

    def configure(
        self, purposes: Iterable[str], epsilon_caps: Mapping[str, float], *, allow_non_dp: bool = True
    ) -> None:
        """Set the node's training policy (administrator action)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM purposes")
            conn.executemany("INSERT INTO purposes VALUES (?)", [(p,) for p in purposes])
            conn.execute("DELETE FROM caps")
            conn.executemany("INSERT INTO caps VALUES (?, ?)", list(epsilon_caps.items()))
            conn.execute("INSERT OR REPLACE INTO settings VALUES ('allow_non_dp', ?)", (str(int(allow_non_dp)),))
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _datasets_for(self, job: JobSpec) -> list[str]:
        with sqlite3.connect(f"file:{self.store}?mode=ro", uri=True) as conn:
            wanted = set(job.features) | {job.label}
            rows = conn.execute("SELECT id, dataset FROM elements").fetchall()
        return sorted({ds for eid, ds in rows if eid in wanted})

    def __call__(self, job: JobSpec, agency: str) -> Decision:
        affected = self._datasets_for(job)
        eps = job_epsilon(job)
        digest = job.digest()
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            prior = conn.execute(
                "SELECT job_digest, approved, reason, epsilon FROM decisions WHERE job_id = ?", (job.job_id,)
            ).fetchone()
            if prior is not None:
                conn.execute("COMMIT")
                if prior[0] != digest:
                    return Decision(False, "job id reused with a different job definition", 0.0)
                return Decision(bool(prior[1]), str(prior[2]), float(prior[3]))
            decision = self._decide(conn, job, affected, eps)
            conn.execute(
                "INSERT INTO decisions VALUES (?,?,?,?,?,?,?)",
                (
                    job.job_id,
                    digest,
                    agency,
                    int(decision.approved),
                    decision.reason,
                    decision.epsilon,
                    datetime.now(UTC).isoformat(),
                ),
            )
            if decision.approved and eps > 0:
                conn.executemany("INSERT INTO spend VALUES (?,?,?)", [(ds, job.job_id, eps) for ds in affected])
            conn.execute("COMMIT")
            return decision
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    @staticmethod
    def _decide(conn: sqlite3.Connection, job: JobSpec, affected: list[str], eps: float) -> Decision:
        if not affected:
            return Decision(False, "node holds none of the job's data elements", 0.0)
        allowed = {r[0] for r in conn.execute("SELECT purpose FROM purposes")}
        if job.purpose not in allowed:
            return Decision(False, f"purpose '{job.purpose}' is not allowed for this node's data", 0.0)
        setting = conn.execute("SELECT setting FROM settings WHERE name = 'allow_non_dp'").fetchone()
        if eps == 0 and setting is not None and setting[0] == "0":
            return Decision(False, "this node only admits differentially private training", 0.0)
        caps = dict(conn.execute("SELECT dataset, epsilon_cap FROM caps").fetchall())
        for ds in affected:
            if ds not in caps:
                return Decision(False, f"no privacy budget is configured for dataset '{ds}'", 0.0)
            spent = conn.execute("SELECT COALESCE(SUM(epsilon), 0) FROM spend WHERE dataset = ?", (ds,)).fetchone()[0]
            if spent + eps > caps[ds] + 1e-12:
                return Decision(
                    False,
                    f"privacy budget of dataset '{ds}' exhausted: spent {spent:g} + job {eps:g} > cap {caps[ds]:g}",
                    0.0,
                )
        return Decision(True, "approved", eps)

    def spent(self, dataset: str) -> float:
        conn = self._connect()
        try:
            return float(
                conn.execute("SELECT COALESCE(SUM(epsilon), 0) FROM spend WHERE dataset = ?", (dataset,)).fetchone()[0]
            )
        finally:
            conn.close()


def require_approval(ledger: Path, job: JobSpec) -> None:
    """ClientApp guard: raise PolicyDenied unless this node's ledger approved exactly this job."""
    if not ledger.exists():
        raise PolicyDenied("node has no admission ledger; job not approved")
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT job_digest, approved FROM decisions WHERE job_id = ?", (job.job_id,)).fetchone()
    if row is None or not row[1] or row[0] != job.digest():
        raise PolicyDenied(f"node has not approved job '{job.job_id}'")


def store_agency_datasets(store: Path, job: JobSpec) -> list[str]:
    """Which of the job's elements this node holds (used to decide which nodes must approve)."""
    held = set(datasets.held_elements(store))
    return sorted(held & (set(job.features) | {job.label}))
