"""Training jobs in the state store: a job submitted through one replica is visible through every one.

A job runs on the replica that accepted it (its Flower processes and job directory are there);
what the others need is the job's record: who submitted it, the gateway's decision, and how it is
going. `TrainingService` claims the job id here when it accepts a job (one id, one job, across
every replica: a second claim is `JobExists`) and mirrors the job's summary (state, rounds, ε,
evaluation, decisions: `gateway/console/training.job_summary`) and its latest events after every
event and at the end. Reads (`GET /v1/training/jobs`, `/v1/training/jobs/{id}`, `/status`) use the
job directory when the job ran here and this record otherwise.

Storage: the replicas' shared database (PostgreSQL, `xgate gateway migrate`), or a SQLite file in
the state directory (one gateway).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xgate.db import Database, Migration, open_store
from xgate.errors import JobExists

_DDL = """
    CREATE TABLE IF NOT EXISTS training_jobs (
        job_id TEXT PRIMARY KEY, replica TEXT NOT NULL, requester TEXT NOT NULL, submission TEXT NOT NULL,
        summary TEXT, events TEXT, submitted_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)
"""
TRAINING_JOB_MIGRATIONS = (
    Migration("training_jobs", 1, sqlite=_DDL.replace("DOUBLE PRECISION", "REAL"), postgresql=_DDL),
)
MAX_EVENTS = 300  # what a job's detail shows


class TrainingJobStore:
    def __init__(self, store: Path | str | Database, replica: str = "gateway") -> None:
        self.replica = replica
        self.db: Database = open_store(store, TRAINING_JOB_MIGRATIONS)

    def claim(self, job_id: str, requester: str, submission: dict[str, Any]) -> None:
        """Record a new job; JobExists if any replica has one under this id."""
        now = time.time()
        with self.db.transaction(lock=[f"training_job:{job_id}"]) as tx:
            if tx.execute("SELECT 1 FROM training_jobs WHERE job_id = ?", (job_id,)).fetchone() is not None:
                raise JobExists(f"job id '{job_id}' is already used in this federation")
            tx.execute(
                "INSERT INTO training_jobs (job_id, replica, requester, submission, submitted_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, self.replica, requester, json.dumps(submission, default=str), now, now),
            )

    def update(self, job_id: str, summary: dict[str, Any], events: list[dict[str, Any]]) -> None:
        with self.db.transaction(lock=[f"training_job:{job_id}"]) as tx:
            tx.execute(
                "UPDATE training_jobs SET summary = ?, events = ?, updated_at = ? WHERE job_id = ?",
                (json.dumps(summary, default=str), json.dumps(events[-MAX_EVENTS:], default=str), time.time(), job_id),
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        """{job_id, replica, requester, submission, summary, events} or None."""
        with self.db.read() as tx:
            row = tx.execute(
                "SELECT job_id, replica, requester, submission, summary, events FROM training_jobs WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        return None if row is None else _view(row)

    def recent(self, limit: int = 200, keep: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """The newest `limit` jobs `keep` accepts (all by default): filtered before the limit, page by
        page, so a caller who may see few jobs still gets its newest ones."""
        out: list[dict[str, Any]] = []
        offset, page = 0, max(limit, 50)
        while len(out) < limit:
            with self.db.read() as tx:
                rows = tx.execute(
                    "SELECT job_id, replica, requester, submission, summary, events FROM training_jobs "
                    "ORDER BY submitted_at DESC LIMIT ? OFFSET ?",
                    (page, offset),
                ).fetchall()
            out += [v for v in map(_view, rows) if keep is None or keep(v)]
            if len(rows) < page:
                break
            offset += page
        return out[:limit]


def _view(row: Any) -> dict[str, Any]:
    job_id, replica, requester, submission, summary, events = row
    return {
        "job_id": str(job_id),
        "replica": str(replica),
        "requester": str(requester),
        "submission": json.loads(submission),
        "summary": json.loads(summary) if summary else None,
        "events": json.loads(events) if events else [],
    }


def summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """A stored job as the console's list shows one (queued until its first mirror)."""
    summary = record["summary"] or {"job_id": record["job_id"], "state": "queued"}
    return {**summary, "requester_agency": requester_agency(record.get("submission")), "replica": record["replica"]}


def requester_agency(submission: Any) -> str | None:
    """The agency a job's submission names as its requester's, or None (not recorded, or malformed)."""
    requester = submission.get("requester") if isinstance(submission, dict) else None
    agency = requester.get("agency") if isinstance(requester, dict) else None
    return agency if isinstance(agency, str) else None
