"""Admission of a training job by each data-owning node, with a persistent privacy-budget ledger.

The provider decides: before a run starts every node holding job data must approve the job
(purpose allowed for its data; the job's epsilon fits the remaining per-dataset budget).

* `PolicyAdmission` (what the gateway uses): the node's own Cedar policy set decides action
  `train` on the registered datasets its held elements belong to (federated/training_policy.py),
  and `policies.budgets.PrivacyLedger` in the node's ledger file charges ε, all datasets at once.
* `LedgerAdmission` (local runs and tests): purposes and ε caps configured in the ledger file.

Both record each decision in the ledger's `decisions` table (survives restarts). A job id is
decided once per (job definition, node policy): the same job under the same policy gets the
recorded decision back, while a resubmission whose definition changed, or whose node policy
changed since (the ledger's purposes/caps, or the Cedar policy-set hash), is decided again and the
new decision says why (`Decision.redecided`, in its audit fields). A re-decided job that is
approved is charged again (its earlier definition may have run). The ClientApp refuses to train
unless that table holds an approval of exactly this job (`require_approval`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from federated import datasets
from federated.jobs import JobSpec
from federated.training_policy import budget_charges, decide_training, job_epsilon, unwrap_engine
from policies.budgets import PrivacyLedger
from xgate.errors import BudgetExhausted, PolicyDenied, XgateError

__all__ = [
    "Admission",
    "Decision",
    "LedgerAdmission",
    "PolicyAdmission",
    "by_agency",
    "job_epsilon",
    "require_approval",
    "store_agency_datasets",
]

_DECISIONS = """
CREATE TABLE IF NOT EXISTS decisions (
    job_id TEXT PRIMARY KEY, job_digest TEXT NOT NULL, agency TEXT NOT NULL, approved INTEGER NOT NULL,
    reason TEXT NOT NULL, epsilon REAL NOT NULL, decided_at TEXT NOT NULL
);
"""
_POLICY_DECISIONS = """
CREATE TABLE IF NOT EXISTS decision_policies (
    job_id TEXT PRIMARY KEY, policy_ids TEXT NOT NULL, policy_set_hash TEXT NOT NULL, datasets TEXT NOT NULL
);
"""
_SCHEMA = (
    _DECISIONS
    + """
CREATE TABLE IF NOT EXISTS purposes (purpose TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS caps (dataset TEXT PRIMARY KEY, epsilon_cap REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, setting TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
    dataset TEXT NOT NULL, job_id TEXT NOT NULL, epsilon REAL NOT NULL, PRIMARY KEY (dataset, job_id)
);
CREATE TABLE IF NOT EXISTS decision_basis (job_id TEXT PRIMARY KEY, basis TEXT NOT NULL);
"""
)
JOB_CHANGED = "job definition changed"
POLICY_CHANGED = "node policy changed"


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: str
    epsilon: float  # epsilon charged against each of the node's affected datasets
    # Set by policy-based admission (what the audit log binds the decision to).
    policy_ids: tuple[str, ...] = ()
    policy_set_hash: str = ""
    datasets: tuple[str, ...] = ()
    # Set when an earlier decision of this job id was replaced: why (JOB_CHANGED or POLICY_CHANGED).
    redecided: str = ""

    def audit_fields(self) -> dict[str, Any]:
        """The policy facts of the decision for its audit event (empty for ledger-only admission)."""
        out: dict[str, Any] = {"redecided": self.redecided} if self.redecided else {}
        if self.policy_set_hash:
            out["policy_ids"] = list(self.policy_ids)
            out["policy_set_hash"] = self.policy_set_hash
        if self.datasets:
            out["datasets"] = list(self.datasets)
        return out


class Admission(Protocol):
    """Per-node admission: (job, agency) -> Decision. Must be idempotent per job_id."""

    def __call__(self, job: JobSpec, agency: str) -> Decision: ...


class LedgerAdmission:
    """Default admission: purposes, epsilon caps and the spend ledger in one SQLite file at the node."""

    def __init__(self, ledger: Path, store: Path) -> None:
        self.ledger = ledger
        self.store = store

    def _connect(self) -> sqlite3.Connection:
        return _open_ledger(self.ledger, _SCHEMA)

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
            basis = self._basis(conn)
            prior = conn.execute(
                "SELECT d.job_digest, d.approved, d.reason, d.epsilon, b.basis FROM decisions d"
                " LEFT JOIN decision_basis b ON b.job_id = d.job_id WHERE d.job_id = ?",
                (job.job_id,),
            ).fetchone()
            redecided = ""
            if prior is not None:
                if prior[0] == digest and prior[4] == basis:
                    conn.execute("COMMIT")
                    return Decision(bool(prior[1]), str(prior[2]), float(prior[3]))
                redecided = JOB_CHANGED if prior[0] != digest else POLICY_CHANGED
            decision = replace(self._decide(conn, job, affected, eps), redecided=redecided)
            conn.execute("INSERT OR REPLACE INTO decision_basis VALUES (?, ?)", (job.job_id, basis))
            conn.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?,?,?,?,?,?,?)",
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
                conn.executemany(  # a re-decided job adds to what its earlier definition was charged
                    "INSERT INTO spend VALUES (?,?,?) ON CONFLICT (dataset, job_id)"
                    " DO UPDATE SET epsilon = epsilon + excluded.epsilon",
                    [(ds, job.job_id, eps) for ds in affected],
                )
            conn.execute("COMMIT")
            return decision
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    @staticmethod
    def _basis(conn: sqlite3.Connection) -> str:
        """Digest of the node's configured training policy (purposes, caps, settings)."""
        policy = [
            sorted(r[0] for r in conn.execute("SELECT purpose FROM purposes")),
            sorted(conn.execute("SELECT dataset, epsilon_cap FROM caps").fetchall()),
            sorted(conn.execute("SELECT name, setting FROM settings").fetchall()),
        ]
        return hashlib.sha256(json.dumps(policy).encode()).hexdigest()

    def _decide(self, conn: sqlite3.Connection, job: JobSpec, affected: list[str], eps: float) -> Decision:
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


class PolicyAdmission:
    """Node-side admission under the node's own Cedar policy set and its PrivacyLedger.

    `engine`: the node's PolicyEngine or PolicyReloader; `ledger`: the node's SQLite file holding
    its decisions and its ε spends (PrivacyLedger's `spends` table); `store`: its node store. The
    requester is the job's `requester` (set by the gateway from the authenticated caller).
    """

    def __init__(self, engine: Any, ledger: Path, store: Path) -> None:
        self.engine = engine
        self.ledger = ledger
        self.store = store

    def _connect(self) -> sqlite3.Connection:
        return _open_ledger(self.ledger, _DECISIONS + _POLICY_DECISIONS)

    def __call__(self, job: JobSpec, agency: str) -> Decision:
        prior = self._prior(job)
        policy_hash = str(unwrap_engine(self.engine).policy_set_hash)
        redecided = ""
        if prior is not None:
            decided, digest = prior
            if digest == job.digest() and (decided.policy_set_hash or policy_hash) == policy_hash:
                return decided
            redecided = JOB_CHANGED if digest != job.digest() else POLICY_CHANGED
        held = set(datasets.held_elements(self.store)) & set(job.elements())
        verdict = decide_training(self.engine, job, user=job.requester, elements=held)
        decision = Decision(
            verdict.allowed,
            "approved" if verdict.allowed else verdict.reason,
            0.0,
            verdict.policy_ids,
            verdict.policy_set_hash,
            verdict.datasets,
            redecided,
        )
        if verdict.allowed and (charges := budget_charges(self.engine, job, verdict.datasets)):
            # Idempotent per charge key: a crash before the decision is recorded charges once; the same
            # definition re-decided under a changed policy is not charged twice, a changed one is.
            key = job.job_id if redecided != JOB_CHANGED else f"{job.job_id}~{job.digest()[:16]}"
            try:
                PrivacyLedger(self.ledger).spend_all(key, charges)
                decision = replace(decision, epsilon=job_epsilon(job))
            except BudgetExhausted as exc:
                decision = replace(decision, approved=False, reason=exc.message)
        return self._record(job, agency, decision)

    def _prior(self, job: JobSpec) -> tuple[Decision, str] | None:
        """The recorded decision of this job id and the digest of the job it decided."""
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT d.job_digest, d.approved, d.reason, d.epsilon, p.policy_ids, p.policy_set_hash, p.datasets"
                " FROM decisions d LEFT JOIN decision_policies p ON p.job_id = d.job_id WHERE d.job_id = ?",
                (job.job_id,),
            ).fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        ids, digest, sets = (json.loads(row[4]), row[5], json.loads(row[6])) if row[4] is not None else ([], "", [])
        decided = Decision(bool(row[1]), str(row[2]), float(row[3]), tuple(ids), str(digest), tuple(sets))
        return decided, str(row[0])

    def _record(self, job: JobSpec, agency: str, d: Decision) -> Decision:
        conn = self._connect()
        verb = "INSERT OR REPLACE" if d.redecided else "INSERT OR IGNORE"
        try:
            conn.execute("BEGIN IMMEDIATE")
            inserted = conn.execute(
                f"{verb} INTO decisions VALUES (?,?,?,?,?,?,?)",
                (job.job_id, job.digest(), agency, int(d.approved), d.reason, d.epsilon, datetime.now(UTC).isoformat()),
            ).rowcount
            if inserted:
                conn.execute(
                    "INSERT OR REPLACE INTO decision_policies VALUES (?,?,?,?)",
                    (job.job_id, json.dumps(list(d.policy_ids)), d.policy_set_hash, json.dumps(list(d.datasets))),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        if inserted:
            return d
        won = self._prior(job)  # a concurrent decision of the same job won
        return d if won is None else won[0]


def by_agency(admissions: Mapping[str, Admission]) -> Admission:
    """One Admission dispatching to each node's own; an agency without one is refused."""

    def decide(job: JobSpec, agency: str) -> Decision:
        own = admissions.get(agency)
        if own is None:
            return Decision(False, f"no admission configured for node '{agency}'", 0.0)
        return own(job, agency)

    return decide


def admit_at_node(
    job: JobSpec, agency: str, ledger: Path, store: Path, policy_dir: Path | None, policy_ca: Path | None = None
) -> None:
    """ClientApp guard at the node's own site: decide now if nothing was decided, then require approval.

    A node with a policy directory runs its own Cedar `train` decision and charges its own ε ledger
    (PolicyAdmission, idempotent per job) the first time it sees the job, so admission holds even
    when nobody decided for it beforehand (a SuperNode on another machine). Without one, the
    decision must already be in its ledger. With `policy_ca` (the node's `signed_policies`), the
    policy directory is verified as the CA-signed bundle first, as at the node's start: a set edited
    on disk refuses the job rather than decide under it.
    """
    if policy_dir is not None and not _decided(ledger, job):
        from policies.decision import PolicyEngine

        if policy_ca is not None:
            from crypto.policy_bundle import verify_installed

            try:
                verify_installed(policy_dir, policy_ca)
            except XgateError as exc:
                why = f"its policy set is not the signed bundle: {exc.message}"
                raise PolicyDenied(f"node '{agency}' refused job '{job.job_id}': {why}") from None
        decision = PolicyAdmission(PolicyEngine.load(policy_dir), ledger, store)(job, agency)
        if not decision.approved:
            raise PolicyDenied(f"node '{agency}' refused job '{job.job_id}': {decision.reason}")
    require_approval(ledger, job)


def _decided(ledger: Path, job: JobSpec) -> bool:
    if not ledger.exists():
        return False
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        try:
            row = conn.execute("SELECT job_digest FROM decisions WHERE job_id = ?", (job.job_id,)).fetchone()
        except sqlite3.OperationalError:  # a ledger without a decisions table has decided nothing
            return False
    return row is not None and row[0] == job.digest()  # a changed definition is decided again


def require_approval(ledger: Path, job: JobSpec) -> None:
    """ClientApp guard: raise PolicyDenied unless this node's ledger approved exactly this job."""
    if not ledger.exists():
        raise PolicyDenied("node has no admission ledger; job not approved")
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT job_digest, approved FROM decisions WHERE job_id = ?", (job.job_id,)).fetchone()
    if row is None or not row[1] or row[0] != job.digest():
        raise PolicyDenied(f"node has not approved job '{job.job_id}'")


_DP_RELEASES = """
CREATE TABLE IF NOT EXISTS dp_releases (
    job_id TEXT PRIMARY KEY, job_digest TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL,
    noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL, recorded_at TEXT NOT NULL
);
"""


def record_dp_plan(
    ledger: Path, job: JobSpec, *, epsilon: float, noise_multiplier: float, sample_rate: float, steps: int
) -> None:
    """Before a node's first DP-SGD step: what its accountant says the job spends, in its ledger.

    Refuses (PolicyDenied) unless the ledger approved exactly this job with record-level DP and the
    accounted epsilon stays within the job's, which admission charged against the dataset's cap.
    """
    require_approval(ledger, job)
    if job.dp is None or epsilon > job.dp.epsilon * (1 + 1e-9):
        allowed = job.dp.epsilon if job.dp is not None else 0.0
        raise PolicyDenied(f"accounted epsilon {epsilon:.4g} exceeds the {allowed:g} approved for job '{job.job_id}'")
    conn = _open_ledger(ledger, _DP_RELEASES)
    try:
        conn.execute(
            "INSERT OR REPLACE INTO dp_releases VALUES (?,?,?,?,?,?,?,?)",
            (
                job.job_id,
                job.digest(),
                epsilon,
                job.dp.delta,
                noise_multiplier,
                sample_rate,
                steps,
                datetime.now(UTC).isoformat(),
            ),
        )
    finally:
        conn.close()


def dp_release(ledger: Path, job_id: str) -> dict[str, Any] | None:
    """The node's recorded DP-SGD accounting of a job, if any."""
    if not ledger.exists():
        return None
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        try:
            row = conn.execute(
                "SELECT epsilon, delta, noise_multiplier, sample_rate, steps FROM dp_releases WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        except sqlite3.OperationalError:
            return None
    if row is None:
        return None
    keys = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps")
    return dict(zip(keys, row, strict=True))


def store_agency_datasets(store: Path, job: JobSpec) -> list[str]:
    """Which of the job's elements this node holds (used to decide which nodes must approve)."""
    held = set(datasets.held_elements(store))
    return sorted(held & (set(job.features) | {job.label}))


def _open_ledger(path: Path, schema: str) -> sqlite3.Connection:
    """A node's admission ledger: durable commits (a decision or ε spend survives a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(schema)
    return conn
