"""Admission of a training job by each data-owning node, with a persistent privacy-budget ledger.

The provider decides: before a run starts every node holding job data must approve the job
(purpose allowed for its data; the job's epsilon fits the remaining per-dataset budget).

* `PolicyAdmission` (what the gateway uses): the node's own Cedar policy set decides action
  `train` on the registered datasets its held elements belong to (federated/training_policy.py),
  and `policies.budgets.PrivacyLedger` in the node's ledger file charges ε, all datasets at once.
* `LedgerAdmission` (local runs and tests): purposes and ε caps configured in the ledger file,
  charged to the same PrivacyLedger.

Both record each decision in the ledger's `decisions` table (survives restarts). A job id is
decided once per (job definition, node policy): the same job under the same policy gets the
recorded decision back, while a resubmission whose definition changed, or whose node policy
changed since (the ledger's purposes/caps, or the Cedar policy-set hash), is decided again and the
new decision says why (`Decision.redecided`, in its audit fields). A changed definition that is
approved is charged as a new job. The ClientApp refuses to train unless that table holds an
approval of exactly this job (`require_approval`).

δ is budgeted like ε: each charge records the job's δ, and a dataset's δs add up against its δ cap
(`configure(delta_caps=...)`, else `PrivacyLedger.DEFAULT_DELTA_CAP`; a job whose δ alone passes
the cap is refused saying so). Each job's δ is also bounded against the dataset's size where the
node plans it, from its released row count (`dp_sgd.delta_problem`): never from the exact count
here, whose threshold a job's δ could otherwise be chosen to probe.

ε is spent per run, not per approval: the approval pays for the first run of a definition, and a
node charges each further run of a DP job again before its first release (`charge_run`, called by
`record_dp_plan`), so neither a resubmission nor a coordinator re-running the approved job can
average the noise away without spending the dataset's budget.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from federated import datasets, dp_sgd, label_dp, signed_jobs
from federated.jobs import JobSpec
from federated.training_policy import budget_charges, decide_training, delta_cap, job_delta, job_epsilon, unwrap_engine
from policies.budgets import PrivacyLedger
from xgate.errors import BudgetExhausted, InvalidInput, PolicyDenied, XgateError

__all__ = [
    "Admission",
    "Decision",
    "LedgerAdmission",
    "PolicyAdmission",
    "by_agency",
    "charge_run",
    "job_epsilon",
    "job_of_charge_key",
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
# What an approval of one job definition charged per dataset (ε and δ, and the caps they were
# checked against) and under which spend key: that approval paid for one run, each further run
# charges the same again (charge_run). A ledger from before δ was budgeted gets the two δ columns
# (`_open_ledger`); its rows' delta_cap 0 means "not recorded": charge_run then charges the job's δ
# against the default cap.
_APPROVED_CHARGES = """
CREATE TABLE IF NOT EXISTS approved_charges (
    job_id TEXT NOT NULL, job_digest TEXT NOT NULL, approval_key TEXT NOT NULL, dataset TEXT NOT NULL,
    epsilon REAL NOT NULL, cap REAL NOT NULL, delta REAL NOT NULL DEFAULT 0, delta_cap REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, dataset)
);
"""
# (dataset, ε, ε cap, δ, δ cap): one dataset's charge of an approval.
Charge = tuple[str, float, float, float, float]
_SCHEMA = (
    _DECISIONS
    + """
CREATE TABLE IF NOT EXISTS purposes (purpose TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS caps (dataset TEXT PRIMARY KEY, epsilon_cap REAL NOT NULL);
CREATE TABLE IF NOT EXISTS delta_caps (dataset TEXT PRIMARY KEY, delta_cap REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, setting TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decision_basis (job_id TEXT PRIMARY KEY, basis TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signing_keys (user TEXT PRIMARY KEY, signing_key TEXT NOT NULL);
"""
    + _APPROVED_CHARGES
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
    """Default admission: purposes and epsilon caps configured in the node's ledger file; its ε
    spends go to the same PrivacyLedger `spends` table PolicyAdmission charges."""

    def __init__(self, ledger: Path, store: Path) -> None:
        self.ledger = ledger
        self.store = store
        _adopt_legacy_spends(ledger)

    def _connect(self) -> sqlite3.Connection:
        return _open_ledger(self.ledger, _SCHEMA)

    def configure(
        self,
        purposes: Iterable[str],
        epsilon_caps: Mapping[str, float],
        *,
        allow_non_dp: bool = True,
        signing_keys: Mapping[str, str] | None = None,
        require_signed_jobs: bool | None = None,
        delta_caps: Mapping[str, float] | None = None,
    ) -> None:
        """Set the node's training policy (administrator action): purposes and caps are replaced.
        `signing_keys`: the analysts' Ed25519 public keys (base64, `xgate train keygen`) whose jobs
        must carry their signature, as a policy set's principals.toml does; given (even empty), they
        replace the trusted keys and the node checks signatures from then on, so removing an
        analyst's key refuses the jobs it signed; None keeps them. `require_signed_jobs`: every job
        must be signed by a trusted key; None keeps the setting. `delta_caps`: the total δ each dataset
        may spend (replaced like the ε caps; a dataset without one gets PrivacyLedger.DEFAULT_DELTA_CAP)."""
        bad = [ds for ds, cap in (delta_caps or {}).items() if not 0 < cap < 1]
        if bad:
            raise InvalidInput(f"the delta cap of dataset '{bad[0]}' must be between 0 and 1 (exclusive)")
        with _writing(self.ledger, _SCHEMA) as conn:
            conn.execute("DELETE FROM purposes")
            # A purpose given twice allows the same jobs as once (not a UNIQUE failure of the ledger).
            conn.executemany("INSERT INTO purposes VALUES (?)", [(p,) for p in dict.fromkeys(purposes)])
            conn.execute("DELETE FROM caps")
            conn.executemany("INSERT INTO caps VALUES (?, ?)", list(epsilon_caps.items()))
            conn.execute("DELETE FROM delta_caps")
            conn.executemany("INSERT INTO delta_caps VALUES (?, ?)", list((delta_caps or {}).items()))
            conn.execute("INSERT OR REPLACE INTO settings VALUES ('allow_non_dp', ?)", (str(int(allow_non_dp)),))
            # Rows only when set: ledgers that never trusted a key keep their decisions' basis.
            if signing_keys is not None:
                conn.execute("DELETE FROM signing_keys")
                conn.executemany("INSERT INTO signing_keys VALUES (?, ?)", sorted(signing_keys.items()))
                conn.execute("INSERT OR REPLACE INTO settings VALUES ('check_signatures', '1')")
            if require_signed_jobs is True:
                conn.execute("INSERT OR REPLACE INTO settings VALUES ('require_signed_jobs', '1')")
            elif require_signed_jobs is False:
                conn.execute("DELETE FROM settings WHERE name = 'require_signed_jobs'")

    def signature_settings(self) -> tuple[list[str], bool, bool]:
        """(users whose keys this node trusts, whether it checks signatures, whether it requires them)."""
        conn = self._connect()
        try:
            users = [str(r[0]) for r in conn.execute("SELECT user FROM signing_keys ORDER BY user")]
            settings = {r[0] for r in conn.execute("SELECT name FROM settings WHERE setting = '1'")}
        finally:
            conn.close()
        return users, "check_signatures" in settings, "require_signed_jobs" in settings

    def _datasets_for(self, job: JobSpec) -> list[str]:
        with sqlite3.connect(f"file:{self.store}?mode=ro", uri=True) as conn:
            wanted = set(job.features) | {job.label}
            rows = conn.execute("SELECT id, dataset FROM elements").fetchall()
        return sorted({ds for eid, ds in rows if eid in wanted})

    def __call__(self, job: JobSpec, agency: str) -> Decision:
        affected = self._datasets_for(job)
        digest = job.digest()
        expired = signed_jobs.expiry_problem(job, datetime.now(UTC))
        if expired is not None:  # nothing decided, recorded or charged for an expired job
            return Decision(False, expired, 0.0)
        conn = self._connect()
        try:
            # As PolicyAdmission: before any recorded decision counts, and never recorded itself.
            unsigned = _ledger_signature_problem(conn, job)
            if unsigned is not None:
                return Decision(False, unsigned, 0.0)
            basis = self._basis(conn)
            prior = conn.execute(
                "SELECT d.job_digest, d.approved, d.reason, d.epsilon, b.basis FROM decisions d"
                " LEFT JOIN decision_basis b ON b.job_id = d.job_id WHERE d.job_id = ?",
                (job.job_id,),
            ).fetchone()
            redecided = ""
            if prior is not None:
                if prior[0] == digest and prior[4] == basis:
                    return Decision(bool(prior[1]), str(prior[2]), float(prior[3]))
                redecided = JOB_CHANGED if prior[0] != digest else POLICY_CHANGED
            decision, charges = self._decide(conn, job, affected)
        finally:
            conn.close()
        decision = replace(decision, redecided=redecided)
        key = _charge_key(job, redecided, self.ledger)
        if decision.approved:
            try:
                _spend(self.ledger, job, key, charges, _label_release(job, agency, self.store, self._budgeted))
            except (BudgetExhausted, InvalidInput) as exc:  # refused, never a traceback
                decision, charges = replace(decision, approved=False, reason=exc.message, epsilon=0.0), []
        with _writing(self.ledger, _SCHEMA) as conn:
            conn.execute("INSERT OR REPLACE INTO decision_basis VALUES (?, ?)", (job.job_id, basis))
            conn.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?,?,?,?,?,?,?)",
                (job.job_id, digest, agency, int(decision.approved), decision.reason, decision.epsilon, _now()),
            )
            _record_approved_charges(conn, job, key, charges)
        return decision

    @staticmethod
    def _basis(conn: sqlite3.Connection) -> str:
        """Digest of the node's configured training policy (purposes, caps, settings)."""
        policy = [
            sorted(r[0] for r in conn.execute("SELECT purpose FROM purposes")),
            sorted(conn.execute("SELECT dataset, epsilon_cap FROM caps").fetchall()),
            sorted(conn.execute("SELECT name, setting FROM settings").fetchall()),
        ]
        keys = sorted(conn.execute("SELECT user, signing_key FROM signing_keys").fetchall())
        if keys:  # only when some: the basis of ledgers without keys is as before
            policy.append(keys)
        delta_caps = sorted(conn.execute("SELECT dataset, delta_cap FROM delta_caps").fetchall())
        if delta_caps:  # likewise
            policy.append([["delta_caps"], *delta_caps])
        return hashlib.sha256(json.dumps(policy).encode()).hexdigest()

    @staticmethod
    def _decide(conn: sqlite3.Connection, job: JobSpec, affected: list[str]) -> tuple[Decision, list[Charge]]:
        """The decision before charging, and the (dataset, ε, cap, δ, δ cap) charges an approval costs."""
        if not affected:
            return Decision(False, "node holds none of the job's data elements", 0.0), []
        if (why := dp_sgd.untrainable(job)) is not None:
            return Decision(False, why, 0.0), []
        allowed = {r[0] for r in conn.execute("SELECT purpose FROM purposes")}
        if job.purpose not in allowed:
            return Decision(False, f"purpose '{job.purpose}' is not allowed for this node's data", 0.0), []
        eps = job_epsilon(job)
        setting = conn.execute("SELECT setting FROM settings WHERE name = 'allow_non_dp'").fetchone()
        if eps == 0 and setting is not None and setting[0] == "0":
            return Decision(False, "this node only admits differentially private training", 0.0), []
        caps = dict(conn.execute("SELECT dataset, epsilon_cap FROM caps").fetchall())
        missing = [ds for ds in affected if ds not in caps]
        if missing:
            return Decision(False, f"no privacy budget is configured for dataset '{missing[0]}'", 0.0), []
        deltas = dict(conn.execute("SELECT dataset, delta_cap FROM delta_caps").fetchall())
        delta = job_delta(job)
        charges = [
            (ds, eps, float(caps[ds]), delta, float(deltas.get(ds, PrivacyLedger.DEFAULT_DELTA_CAP))) for ds in affected
        ]
        if eps > 0 and (why := _delta_too_large(charges)) is not None:
            return Decision(False, why, 0.0), []
        return Decision(True, "approved", eps), charges if eps > 0 else []

    def _budgeted(self, element: str) -> tuple[str, float] | None:
        """The store's dataset holding `element` and its configured cap (None without one)."""
        with sqlite3.connect(f"file:{self.store}?mode=ro", uri=True) as store:
            row = store.execute("SELECT dataset FROM elements WHERE id = ?", (element,)).fetchone()
        conn = self._connect()
        try:
            cap = conn.execute("SELECT epsilon_cap FROM caps WHERE dataset = ?", (row[0],)).fetchone() if row else None
        finally:
            conn.close()
        return (str(row[0]), float(cap[0])) if row and cap else None

    def spent(self, dataset: str) -> float:
        return PrivacyLedger(self.ledger).spent(dataset)


class PolicyAdmission:
    """Node-side admission under the node's own Cedar policy set and its PrivacyLedger.

    `engine`: the node's PolicyEngine or PolicyReloader; `ledger`: the node's SQLite file holding
    its decisions and its ε spends (PrivacyLedger's `spends` table); `store`: its node store. The
    requester is the job's `requester` (set by the gateway from the authenticated caller). A job
    whose requester has a registered signing key (or any job, with require_signed_jobs) is refused
    unless it carries that key's signature over exactly this definition (federated/signed_jobs.py).
    """

    def __init__(self, engine: Any, ledger: Path, store: Path) -> None:
        self.engine = engine
        self.ledger = ledger
        self.store = store

    def _connect(self) -> sqlite3.Connection:
        return _open_ledger(self.ledger, _DECISIONS + _POLICY_DECISIONS + _APPROVED_CHARGES)

    def __call__(self, job: JobSpec, agency: str) -> Decision:
        prior = self._prior(job)
        current = unwrap_engine(self.engine)
        policy_hash = str(current.policy_set_hash)
        redecided = ""
        if prior is not None and prior[1] != job.digest():
            redecided = JOB_CHANGED
        elif prior is not None and (prior[0].policy_set_hash or policy_hash) != policy_hash:
            redecided = POLICY_CHANGED
        # Checked at every admission, before any recorded decision counts: an approval recorded
        # before the requester registered a key (or before require_signed_jobs) does not let an
        # unsigned or rewritten copy through. Not recorded either: the digest leaves the signature
        # out, so a recorded refusal would refuse the signed definition too (a coordinator could
        # poison ids), and dropping the earlier approval would make the signed one pay again.
        unsigned = signed_jobs.signature_problem(job, current.principal(job.requester), current.require_signed_jobs)
        unsigned = unsigned or signed_jobs.expiry_problem(job, datetime.now(UTC))
        if unsigned is not None:
            return Decision(False, unsigned, 0.0, (), policy_hash, (), redecided)
        if prior is not None and not redecided:
            return prior[0]
        if (why := dp_sgd.untrainable(job)) is not None:
            return self._record(job, agency, Decision(False, why, 0.0, (), policy_hash, (), redecided), [], "")
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
        current = unwrap_engine(self.engine)
        charges: list[Charge] = [
            (ds, eps, cap, job_delta(job), delta_cap(current, ds))
            for ds, eps, cap in (budget_charges(self.engine, job, verdict.datasets) if verdict.allowed else [])
        ]
        if charges and (why := _delta_too_large(charges)) is not None:
            decision, charges = replace(decision, approved=False, reason=why), []
        key = _charge_key(job, redecided, self.ledger)
        if decision.approved:
            try:
                _spend(self.ledger, job, key, charges, _label_release(job, agency, self.store, self._budgeted))
                decision = replace(decision, epsilon=job_epsilon(job))
            except (BudgetExhausted, InvalidInput) as exc:  # refused, never a traceback
                decision, charges = replace(decision, approved=False, reason=exc.message), []
        return self._record(job, agency, decision, charges, key)

    def admit_decided(self, job: JobSpec, agency: str) -> Decision:
        """At a ClientApp message: a definition not decided yet is decided (`__call__`). One already
        decided gets its signature checked under the policy set in force and, if that set changed
        since the decision, the Cedar decision again. An approval still permitted is not charged or
        recorded again (a policy edit must not re-charge a running job); one the policy no longer
        permits is refused (a revocation stops new runs); a refusal the policy now permits is decided
        again (POLICY_CHANGED, charged once)."""
        prior = self._prior(job)
        if prior is None or prior[1] != job.digest():
            return self(job, agency)
        current = unwrap_engine(self.engine)
        unsigned = signed_jobs.signature_problem(job, current.principal(job.requester), current.require_signed_jobs)
        if unsigned is not None:  # expiry: admit_at_node, its caller, checks it first
            return Decision(False, unsigned, 0.0, (), str(current.policy_set_hash))
        if not prior[0].policy_set_hash or prior[0].policy_set_hash == current.policy_set_hash:
            return prior[0]
        if not prior[0].approved:
            return self(job, agency)
        held = set(datasets.held_elements(self.store)) & set(job.elements())
        verdict = decide_training(self.engine, job, user=job.requester, elements=held)
        if not verdict.allowed:
            reason = f"the node's policy no longer permits it: {verdict.reason}"
            return Decision(False, reason, 0.0, verdict.policy_ids, verdict.policy_set_hash, verdict.datasets)
        return prior[0]

    def _budgeted(self, element: str) -> tuple[str, float] | None:
        """The registered dataset holding `element` and its ε cap (None if none holds it)."""
        current = unwrap_engine(self.engine)
        covered, _ = current.training_datasets([element])
        dataset = next(iter(covered), None)
        return (dataset, float(current.epsilon_cap(dataset))) if dataset is not None else None

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

    def _record(self, job: JobSpec, agency: str, d: Decision, charges: list[Charge], key: str) -> Decision:
        verb = "INSERT OR REPLACE" if d.redecided else "INSERT OR IGNORE"
        with _writing(self.ledger, _DECISIONS + _POLICY_DECISIONS + _APPROVED_CHARGES) as conn:
            inserted = conn.execute(
                f"{verb} INTO decisions VALUES (?,?,?,?,?,?,?)",
                (job.job_id, job.digest(), agency, int(d.approved), d.reason, d.epsilon, _now()),
            ).rowcount
            if inserted:
                conn.execute(
                    "INSERT OR REPLACE INTO decision_policies VALUES (?,?,?,?)",
                    (job.job_id, json.dumps(list(d.policy_ids)), d.policy_set_hash, json.dumps(list(d.datasets))),
                )
                _record_approved_charges(conn, job, key, charges)
        if inserted:
            return d
        won = self._prior(job)  # a concurrent decision of the same job won
        return d if won is None else won[0]


def job_of_charge_key(key: str) -> str:
    """The job id in a privacy-ledger key: `<job>`, `<job>~<digest>` (_charge_key),
    `<job>~<digest>#run-<id>` (charge_run) or `<job>~adopted` (a legacy ledger's spends)."""
    return key.split("~", 1)[0].split("#", 1)[0]


def _charge_key(job: JobSpec, redecided: str, ledger: Path | None = None) -> str:
    """The spend key of an approval. Idempotent per key: a crash before the decision is recorded
    charges once; the same definition re-decided under a changed policy is not charged twice (its
    further runs are, by charge_run): it keeps the key it was approved under, which is
    `<job>~<digest>` if it was itself a changed definition; a changed definition is charged as a
    new job."""
    if redecided == JOB_CHANGED:
        return f"{job.job_id}~{job.digest()[:16]}"
    if redecided == POLICY_CHANGED and ledger is not None and ledger.exists():
        changed_key = f"{job.job_id}~{job.digest()[:16]}"
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
            try:
                row = conn.execute(
                    "SELECT approval_key FROM approved_charges WHERE job_id = ? AND job_digest = ? LIMIT 1",
                    (job.job_id, job.digest()),
                ).fetchone()
                # a refusal in between deleted that row: the spend itself still says which key it was
                row = (
                    row or conn.execute("SELECT job_id FROM spends WHERE job_id = ? LIMIT 1", (changed_key,)).fetchone()
                )
            except sqlite3.OperationalError:  # a ledger from before approved_charges (or with no spends yet)
                row = None
        if row is not None:
            return str(row[0])
    return job.job_id


def _label_release(
    job: JobSpec, agency: str, store: Path, dataset_of: Callable[[str], tuple[str, float] | None]
) -> tuple[str, float, float] | None:
    """At the label holder of a label-DP job: (dataset, ε, cap) of the noisy-label release the job
    trains on; `dataset_of` maps an element to its budgeted dataset and that dataset's cap."""
    if job.label_dp is None or agency != job.label_holder or job.label not in datasets.held_elements(store):
        return None
    budgeted = dataset_of(job.label)
    if budgeted is None:  # admission refuses unbudgeted datasets before: kept as a refusal, not a charge
        raise InvalidInput(f"no privacy budget is configured for the dataset of label '{job.label}'")
    return budgeted[0], float(job.label_dp), budgeted[1]


def _delta_too_large(charges: Iterable[Charge]) -> str | None:
    """Why one charge's δ alone passes its dataset's δ cap (None if none does): a clear refusal, not
    a budget that merely ran out."""
    for ds, _, _, delta, cap in charges:
        if delta > cap:
            return (
                f"delta {delta:g} exceeds the delta cap {cap:g} of dataset '{ds}' (the most all jobs on it"
                " may spend together): ask for a smaller delta"
            )
    return None


def _spend(
    ledger: Path,
    job: JobSpec,
    key: str,
    charges: Iterable[Charge],
    label: tuple[str, float, float] | None,
) -> None:
    """Charge an approval, all or nothing: the job's record-DP ε on each dataset (its first run),
    and a label-DP release the first time these labels are released at this ε. The release is
    keyed by (element, ε), not by job: its flips repeat (federated/label_dp.py), so every later job
    or run training on it is post-processing of a release already paid for."""
    keyed: list[tuple[str, str, float, float] | tuple[str, str, float, float, float, float]]
    keyed = [(key, *c) for c in charges]
    if label is not None:  # randomized response is ε-DP: δ 0
        dataset, eps, cap = label
        keyed.append((label_release_key(job.label, eps), dataset, eps, cap))
    if keyed:
        PrivacyLedger(ledger).spend_each(keyed)


def label_release_key(label: str, epsilon: float) -> str:
    """The spend key of one label-DP release: (element, ε) hashed, so any element name fits the key."""
    return "label-dp~" + hashlib.sha256(label_dp.release_domain(label, epsilon).encode()).hexdigest()[:32]


def _record_approved_charges(
    conn: sqlite3.Connection, job: JobSpec, approval_key: str, charges: Iterable[Charge]
) -> None:
    conn.execute("DELETE FROM approved_charges WHERE job_id = ?", (job.job_id,))
    conn.executemany(
        "INSERT INTO approved_charges (job_id, job_digest, approval_key, dataset, epsilon, cap, delta, delta_cap)"
        " VALUES (?,?,?,?,?,?,?,?)",
        [(job.job_id, job.digest(), approval_key, *c) for c in charges],
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()


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
    """ClientApp guard at the node's own site: decide a definition not decided yet, then require approval.

    A node with a policy directory runs its own Cedar `train` decision and charges its own ε ledger
    (PolicyAdmission) the first time it sees a definition, so admission holds even when nobody
    decided for it beforehand (a SuperNode on another machine); a definition it already decided is
    not decided again mid-run (a policy edit must not re-charge or refuse a running job), but its
    signature is checked at every message against the policy set in force
    (federated/signed_jobs.py): an approval recorded before the requester registered a key does not
    let an unsigned or rewritten copy through. Without a policy directory, the decision must already
    be in its ledger. With `policy_ca` (the node's `signed_policies`), the policy directory is
    verified as the CA-signed bundle first, as at the node's start: a set edited on disk refuses the
    job rather than decide under it.
    """
    expired = signed_jobs.expiry_problem(job, datetime.now(UTC))
    if expired is not None:  # before anything is decided or charged: an expired job costs nothing
        raise PolicyDenied(f"node '{agency}' refused job '{job.job_id}': {expired}")
    if policy_dir is not None:
        from policies.decision import PolicyEngine

        if policy_ca is not None:
            from crypto.policy_bundle import verify_installed

            try:
                verify_installed(policy_dir, policy_ca)
            except XgateError as exc:
                why = f"its policy set is not the signed bundle: {exc.message}"
                raise PolicyDenied(f"node '{agency}' refused job '{job.job_id}': {why}") from None
        try:
            engine = PolicyEngine.load(policy_dir)
        except XgateError as exc:  # a broken or half-written set refuses the job, as a bundle that fails does
            raise PolicyDenied(f"node '{agency}' refused job '{job.job_id}': its policy set: {exc.message}") from None
        decision = PolicyAdmission(engine, ledger, store).admit_decided(job, agency)
        if not decision.approved:
            raise PolicyDenied(f"node '{agency}' refused job '{job.job_id}': {decision.reason}")
    elif (unsigned := ledger_signature_problem(ledger, job)) is not None:  # at every message, as above
        raise PolicyDenied(f"node '{agency}' refused job '{job.job_id}': {unsigned}")
    require_approval(ledger, job)


def _ledger_signature_problem(conn: sqlite3.Connection, job: JobSpec) -> str | None:
    """federated/signed_jobs.py's check against the analysts' keys a ledger-only node trusts."""
    settings = {r[0] for r in conn.execute("SELECT name FROM settings WHERE setting = '1'")}
    required = "require_signed_jobs" in settings
    if not required and "check_signatures" not in settings:
        return None  # a node whose administrator never managed analysts' keys checks none, as before
    key = conn.execute("SELECT signing_key FROM signing_keys WHERE user = ?", (job.requester,)).fetchone()
    return signed_jobs.signature_problem_for_key(job, str(key[0]) if key else None, required)


def ledger_signature_problem(ledger: Path, job: JobSpec) -> str | None:
    """Why a ledger-only node refuses this job's signature (None: fine, or the ledger trusts no key)."""
    if not ledger.exists():
        return None
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"signing_keys", "settings"} <= tables:
            return None  # a ledger configured before signing keys existed trusts none
        return _ledger_signature_problem(conn, job)


def require_approval(ledger: Path, job: JobSpec) -> None:
    """ClientApp guard: raise PolicyDenied unless this node's ledger approved exactly this job."""
    if not ledger.exists():
        raise PolicyDenied("node has no admission ledger; job not approved")
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT job_digest, approved FROM decisions WHERE job_id = ?", (job.job_id,)).fetchone()
    if row is None or not row[1] or row[0] != job.digest():
        raise PolicyDenied(f"node has not approved job '{job.job_id}'")


_DP_RUNS = """
CREATE TABLE IF NOT EXISTS dp_runs (
    job_id TEXT NOT NULL, approval_key TEXT NOT NULL, run_id TEXT NOT NULL, charge_key TEXT NOT NULL,
    charged INTEGER NOT NULL, started_at TEXT NOT NULL, PRIMARY KEY (job_id, approval_key, run_id)
);
"""


def charge_run(ledger: Path, job: JobSpec, run_id: str) -> None:
    """Every run of an approved DP job spends the job's ε at this node, before its first release.

    An approval paid for one run of the definition it approved. A further run (a resubmission, or
    a coordinator starting the approved job again to average its noise away) releases fresh noise,
    so it is charged that approval's amounts again, all datasets at once, or refused
    (PolicyDenied) when a dataset's cap would be passed. The approval, its charges and which run is
    the first are read in one transaction under the ledger's write lock, so a concurrent
    re-decision cannot slip another definition's charges in. Idempotent within a run: Flower sends
    many messages.
    """
    digest = job.digest()
    with _writing(ledger, _DECISIONS + _APPROVED_CHARGES + _DP_RUNS) as conn:
        decided = conn.execute("SELECT job_digest, approved FROM decisions WHERE job_id = ?", (job.job_id,)).fetchone()
        if decided is None or not decided[1] or decided[0] != digest:
            raise PolicyDenied(f"node has not approved job '{job.job_id}'")
        rows = conn.execute(
            "SELECT approval_key, dataset, epsilon, cap, delta, delta_cap FROM approved_charges"
            " WHERE job_id = ? AND job_digest = ? ORDER BY dataset",
            (job.job_id, digest),
        ).fetchall()
        approval = str(rows[0][0]) if rows else f"{job.job_id}~{digest[:16]}~uncharged"
        # An approval recorded before δ was budgeted (delta_cap 0): the job's δ against the default cap.
        charges: list[Charge] = [
            (str(ds), float(eps), float(cap), float(d), float(dc))
            if dc
            else (str(ds), float(eps), float(cap), job_delta(job), PrivacyLedger.DEFAULT_DELTA_CAP)
            for _, ds, eps, cap, d, dc in rows
        ]
        row = conn.execute(
            "SELECT charge_key, charged FROM dp_runs WHERE job_id = ? AND approval_key = ? AND run_id = ?",
            (job.job_id, approval, run_id),
        ).fetchone()
        if row is None:
            first = (
                conn.execute(
                    "SELECT 1 FROM dp_runs WHERE job_id = ? AND approval_key = ? LIMIT 1", (job.job_id, approval)
                ).fetchone()
                is None
            )
            row = ("", 1) if first else (f"{job.job_id}~{digest[:16]}#run-{run_id}", 0)
            conn.execute("INSERT INTO dp_runs VALUES (?,?,?,?,?,?)", (job.job_id, approval, run_id, *row, _now()))
    key, charged = str(row[0]), bool(row[1])
    if charged:
        return
    refused = f"node refused run {run_id} of job '{job.job_id}', which already ran here"
    if not charges:
        raise PolicyDenied(f"{refused}: its approval recorded no ε charge to repeat; resubmit it under a new job id")
    try:
        PrivacyLedger(ledger).spend_all(key, charges)  # a concurrent message of this run replays the charge
    except BudgetExhausted as exc:
        raise PolicyDenied(f"{refused}: each run spends the job's ε again, and {exc.message}") from None
    with _writing(ledger, _DP_RUNS) as conn:
        conn.execute(
            "UPDATE dp_runs SET charged = 1 WHERE job_id = ? AND approval_key = ? AND run_id = ?",
            (job.job_id, approval, run_id),
        )


_DP_RELEASES = """
CREATE TABLE IF NOT EXISTS dp_releases (
    job_id TEXT PRIMARY KEY, job_digest TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL,
    noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL, recorded_at TEXT NOT NULL
);
"""


def record_dp_plan(
    ledger: Path,
    job: JobSpec,
    *,
    run_id: str,
    epsilon: float,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
) -> None:
    """Before a node's first DP-SGD release in a run: what its accountant says the run spends, in its ledger.

    Refuses (PolicyDenied) unless the ledger approved exactly this job with record-level DP, the
    accounted epsilon stays within the job's, which admission charged against the dataset's cap,
    and this run's charge fits (charge_run: every run after the first is charged again).
    """
    require_approval(ledger, job)
    if job.dp is None or epsilon > job.dp.epsilon * (1 + 1e-9):
        allowed = job.dp.epsilon if job.dp is not None else 0.0
        raise PolicyDenied(f"accounted epsilon {epsilon:.4g} exceeds the {allowed:g} approved for job '{job.job_id}'")
    charge_run(ledger, job, run_id)
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
                _now(),
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


def _adopt_legacy_spends(ledger: Path) -> None:
    """Move a ledger's spends from LedgerAdmission's former `spend` table into PrivacyLedger's
    `spends`, once and atomically: an upgraded node keeps every ε it has spent (a job it decided
    before is charged afresh if it is decided again: the conservative side)."""
    if not ledger.exists():
        return
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as probe:
        legacy = probe.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spend'").fetchone()
    if legacy is None:
        return
    PrivacyLedger(ledger)  # creates `spends` (its migration) if this ledger never had one
    with _writing(ledger, "") as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spend'").fetchone():
            # Under a key of their own: the old table summed every re-decision under the job id, a
            # sum no later charge under that key could replay.
            conn.execute(
                "INSERT INTO spends (dataset, job_id, epsilon, at)"
                " SELECT dataset, job_id || '~adopted', epsilon, ? FROM spend WHERE true"
                " ON CONFLICT (dataset, job_id) DO UPDATE SET epsilon = spends.epsilon + excluded.epsilon",
                (_now(),),
            )
            conn.execute("DROP TABLE spend")


@contextmanager
def _writing(path: Path, schema: str) -> Iterator[sqlite3.Connection]:
    """One write transaction on a node's ledger: BEGIN IMMEDIATE takes the file's write lock, so
    what the block reads is still true when it writes; committed at the end, rolled back on error."""
    conn = _open_ledger(path, schema)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _open_ledger(path: Path, schema: str) -> sqlite3.Connection:
    """A node's admission ledger: durable commits (a decision or ε spend survives a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(schema)
    if "approved_charges" in schema:
        _add_delta_columns(conn)
    return conn


def _add_delta_columns(conn: sqlite3.Connection) -> None:
    """A ledger's approved_charges from before δ was budgeted gets its δ columns (0: not recorded)."""
    for column in ("delta", "delta_cap"):
        present = {str(r[1]) for r in conn.execute("PRAGMA table_info(approved_charges)")}
        if column in present:
            continue
        try:
            conn.execute(f"ALTER TABLE approved_charges ADD COLUMN {column} REAL NOT NULL DEFAULT 0")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise
