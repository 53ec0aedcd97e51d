"""Attack (issue 13, item 2, for training): an analyst names an approval it wrote itself.

A training job's `approval_ref` was free text, recorded in the audit log as if someone had
approved the job. It now has to name a registered approval signed by a registered approver that
covers the job's datasets and its id (policies/approvals.py `evaluate_training`); anything else is
refused before the ε ledger or any node is touched, and the refusal is audited (stage `approval`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.training_service import TrainingService
from policies.approvals import ApprovalRegistry
from policies.budgets import PrivacyLedger
from tests.unit.test_approvals import APPROVER_KEY, APPROVERS, HRSS_APPROVER_KEY, approval
from tests.unit.test_training_gateway import Log, post, training_env
from tests.unit.training_support import job_body

DATASET = "medical.claims_2025"
NOW = datetime.now(UTC)


def training_approval(key: Any = HRSS_APPROVER_KEY, **change: Any) -> str:
    scope: dict[str, Any] = {
        "agencies": ["hrss"],
        "programs": [],
        "datasets": [DATASET],
        "case_ids": None,
        "case_id_prefix": "job-",
        "max_subjects": None,
        "valid_from": (NOW - timedelta(days=1)).isoformat(),
        "valid_until": (NOW + timedelta(days=30)).isoformat(),
    }
    scope.update(change)
    return approval(key, **scope)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, TrainingService, Log, ApprovalRegistry]]:
    registry = ApprovalRegistry(tmp_path / "approvals.sqlite", approvers=APPROVERS)
    with training_env(tmp_path, approvals=registry) as (client, service, log, _):
        yield client, service, log, registry


def _submit(client: TestClient, job_id: str, ref: str) -> Any:
    return post(client, "analyst", {**job_body(job_id, epsilon=1.0), "approval_ref": ref})


def test_a_self_written_approval_reference_is_refused_and_spends_nothing(env: Any) -> None:
    client, service, log, _ = env
    r = _submit(client, "job-self", "I-APPROVE-MYSELF")
    assert r.status_code == 403, r.text
    assert "names no registered approval" in r.json()["message"]
    (refused,) = [x for x in log.records if x.kind == "training_job_refused"]
    assert refused.metadata["stage"] == "approval" and refused.decision == "deny"
    assert PrivacyLedger(service.ledger.path).spent(DATASET) == 0.0
    assert not (service.jobs_dir / "job-self").exists()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"datasets": ["hrss.contributions_2025"]}, "does not cover dataset 'medical.claims_2025'"),
        ({"case_id_prefix": "other-"}, "does not cover training job 'job-scope'"),
        ({"agencies": ["civil_affairs"], "key": APPROVER_KEY}, "was given to another agency, not 'hrss'"),
        ({"valid_until": (NOW - timedelta(hours=1)).isoformat()}, "has expired"),
    ],
)
def test_a_registered_approval_used_outside_its_scope_is_refused(env: Any, change: dict[str, Any], why: str) -> None:
    client, service, _, registry = env
    key = change.pop("key", HRSS_APPROVER_KEY)
    ref = registry.register_signed(training_approval(key, **change)).ref
    r = _submit(client, "job-scope", ref)
    assert r.status_code == 403 and why in r.json()["message"], r.text
    assert PrivacyLedger(service.ledger.path).spent(DATASET) == 0.0


def test_a_revoked_approval_is_refused(env: Any) -> None:
    client, _, _, registry = env
    ref = registry.register_signed(training_approval()).ref
    registry.revoke(ref)
    r = _submit(client, "job-revoked", ref)
    assert r.status_code == 403 and "revoked" in r.json()["message"]


def test_positive_control_a_signed_approval_covering_the_job_is_accepted(env: Any) -> None:
    client, service, log, registry = env
    ref = registry.register_signed(training_approval()).ref
    r = _submit(client, "job-approved", ref)
    assert r.status_code == 202, r.text
    assert PrivacyLedger(service.ledger.path).spent(DATASET) == 1.0
    assert not [x for x in log.records if x.kind == "training_job_refused"]
