"""The `train` decision (pure): which registered datasets a job reads, Cedar on each, and the ε charge.

Shared by the gateway (before it accepts a job) and every data-owning node (before it joins one,
over the elements it holds): both evaluate the same Cedar policy set for action `train` on
`Dataset::<id>` with the job's purpose, legal basis and approval reference. A job's features and
label map to datasets through `policies/datasets.toml` (`elements`); an element no registered
dataset holds is refused (deny by default).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from federated.jobs import JobSpec
from policies.budgets import LedgerEntry, PrivacyLedger
from policies.types import AccessRequest
from xgate.errors import PolicyDenied


@dataclass(frozen=True)
class TrainingDecision:
    allowed: bool
    reasons: tuple[str, ...]  # permitting policy ids, or why it was refused
    policy_ids: tuple[str, ...]
    policy_set_hash: str
    datasets: tuple[str, ...]  # the registered datasets the decision covered

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def raise_if_denied(self) -> None:
        if not self.allowed:
            raise PolicyDenied(
                f"training job refused by policy: {self.reason}",
                reasons=list(self.reasons),
                policy_ids=list(self.policy_ids),
                policy_set_hash=self.policy_set_hash,
                datasets=list(self.datasets),
            )


def unwrap_engine(source: Any) -> Any:
    """A PolicyEngine from itself, a PolicyReloader (version in force) or a CheckAuthorizer."""
    while hasattr(source, "engine"):
        source = source.engine
    return source


def job_epsilon(job: JobSpec) -> float:
    return job.dp.epsilon if job.dp is not None else 0.0


def job_delta(job: JobSpec) -> float:
    return job.dp.delta if job.dp is not None else 0.0


def delta_cap(engine: Any, dataset: str) -> float:
    """The dataset's total δ cap: the policy set's, where it declares one, else the ledger's default."""
    declared = getattr(unwrap_engine(engine), "delta_cap", None)
    return float(declared(dataset)) if callable(declared) else PrivacyLedger.DEFAULT_DELTA_CAP


def train_requests(
    job: JobSpec, datasets: Iterable[str], *, user: str, agency: str, at: datetime | None = None
) -> list[AccessRequest]:
    return [
        AccessRequest(
            principal=user,
            action="train",
            resource=f"Dataset::{d}",
            purpose=job.purpose,
            legal_basis=job.legal_basis,
            approval_ref=job.approval_ref,
            requesting_agency=agency,
            at=at,
        )
        for d in datasets
    ]


def decide_training(
    engine: Any,
    job: JobSpec,
    *,
    user: str,
    agency: str = "",
    elements: Iterable[str] | None = None,
    at: datetime | None = None,
) -> TrainingDecision:
    """Cedar `train` on every dataset the job's elements (or the given subset of them) belong to.

    `agency` is the caller's authenticated agency (checked against the registry; "" at a node,
    which takes the requester's agency from its own registry). Fails closed like the engine.
    """
    current = unwrap_engine(engine)
    wanted = job.elements() if elements is None else tuple(e for e in job.elements() if e in set(elements))
    if not user:
        return _deny(current, "the job names no requester")
    if not wanted:
        return _deny(current, "the decision covers none of the job's data elements")
    covered, unmapped = current.training_datasets(wanted)
    if unmapped:
        names = ", ".join(unmapped[:5]) + (" ..." if len(unmapped) > 5 else "")
        return _deny(current, f"data elements not in any dataset registered for training: {names}", tuple(covered))
    decision = current.decide_all(train_requests(job, covered, user=user, agency=agency, at=at))
    return TrainingDecision(
        decision.allowed, decision.reasons, decision.policy_ids, decision.policy_set_hash, tuple(covered)
    )


def _deny(engine: Any, reason: str, datasets: tuple[str, ...] = ()) -> TrainingDecision:
    return TrainingDecision(False, (reason,), (), engine.policy_set_hash, datasets)


def budget_charges(engine: Any, job: JobSpec, datasets: Iterable[str]) -> list[tuple[str, float, float]]:
    """(dataset, ε, cap) per dataset for a DP job; nothing for a job without DP (it spends no ε)."""
    eps = job_epsilon(job)
    current = unwrap_engine(engine)
    return [(d, eps, current.epsilon_cap(d)) for d in datasets] if eps > 0 else []


def charge(ledger: PrivacyLedger, engine: Any, job: JobSpec, datasets: Iterable[str]) -> list[LedgerEntry]:
    """Spend the job's ε and δ on every dataset at once, or raise BudgetExhausted and spend nothing."""
    charges = [(d, e, c, job_delta(job), delta_cap(engine, d)) for d, e, c in budget_charges(engine, job, datasets)]
    return ledger.spend_all(job.job_id, charges) if charges else []
