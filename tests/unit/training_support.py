"""Shared by the training tests: a policy set registering synthetic 'medical' elements for training,
and regional node stores holding them (the synthetic population under medical.* names)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.devfed import write_dev_policies
from federated import datasets

# synthetic_population's columns under the medical agency's names (one dataset: medical.claims_2025)
RENAME = {
    "civil.age": "medical.age",
    "tax.income": "medical.claims_total",
    "hrss.months": "medical.insured_months",
    "civil.disabled": "medical.disabled",
    "civil.region": "medical.region",
    "health.visits": "medical.visits",
    "tax.label": "medical.fraud_flag",
}
FEATURES = [v for k, v in RENAME.items() if k != "tax.label"]
LABEL = "medical.fraud_flag"
LEGAL_BASIS = "SIL-2010-art-87"  # what policies/agreements/train-medical-claims.cedar requires
PURPOSE = "fraud_detection"


def write_training_policies(target: Path, cap: float = 3.0, signed_jobs: bool = False) -> Path:
    """The shipped policy set, plus the synthetic elements in medical.claims_2025 with ε cap `cap`.

    The shipped set requires every job signed (THREAT_MODEL F22); these tests are about admission,
    budgets and runs, so unsigned jobs are allowed unless `signed_jobs`. Signatures are tested on
    their own (tests/attacks/test_coordinator_rewrites_a_signed_job.py, tests/deploy/)."""
    write_dev_policies(target)
    require_signed_jobs(target, signed_jobs)
    with (target / "data_elements.toml").open("a", encoding="utf-8") as fh:
        for element in RENAME.values():
            fh.write(f'\n[[elements]]\nid = "{element}"\nagency = "medical"\nclassification = "important"\n')
    elements = ", ".join(f'"{e}"' for e in ["medical.annual_claims", "medical.inpatient_days", *RENAME.values()])
    (target / "datasets.toml").write_text(
        f'[[datasets]]\nid = "medical.claims_2025"\nagency = "medical"\nclassification = "important"\n'
        f"epsilon_cap = {cap}\nelements = [{elements}]\n\n"
        '[[datasets]]\nid = "hrss.contributions_2025"\nagency = "hrss"\nclassification = "important"\n'
        'epsilon_cap = 8.0\nelements = ["hrss.contribution_months"]\n'
    )
    return target


def require_signed_jobs(policies: Path, required: bool) -> None:
    """Set the policy set's `[training] require_signed_jobs`."""
    settings = policies / "settings.toml"
    text = settings.read_text()
    assert text.count("require_signed_jobs = true") == 1, "the shipped settings.toml states the setting once"
    settings.write_text(text.replace("require_signed_jobs = true", f"require_signed_jobs = {str(required).lower()}"))


def write_region_stores(root: Path, sizes: list[int], seed: int = 11) -> list[tuple[str, Path, Path]]:
    """(agency, store, ledger) per region: disjoint slices of one synthetic population."""
    subjects, cols, _ = datasets.synthetic_population(sum(sizes), seed=seed)
    out, start = [], 0
    for k, size in enumerate(sizes):
        part = slice(start, start + size)
        start += size
        store = root / f"region{k}" / "store.sqlite"
        datasets.write_store(
            store,
            f"claims_region{k}",
            subjects[part],
            {RENAME[e]: datasets.Column(c.values[part], c.type, c.min, c.max) for e, c in cols.items()},
        )
        out.append((f"region{k}", store, root / f"region{k}" / "ledger.sqlite"))
    return out


def job_body(job_id: str, epsilon: float | None = None, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "job_id": job_id,
        "purpose": PURPOSE,
        "legal_basis": LEGAL_BASIS,
        "mode": "horizontal",
        "features": FEATURES,
        "label": LABEL,
        "label_holder": "medical",
        "rounds": 1,
        "secagg": False,
        "min_nodes": 2,
        "batch_size": 64,
        "round_timeout_s": 90,
        "job_timeout_s": 400,
    }
    if epsilon is not None:
        body["dp"] = {"epsilon": epsilon, "delta": 1e-5, "clip": 1.0}
    body.update(overrides)
    return body


def prepare_gateway_dir(gw: Path, policies: Path, **overrides: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """A development gateway's files in `gw` (mask key, users, audit key): its API keys and the
    [gateway] section of its config (plain HTTP on loopback, generous rate limits for tests)."""
    from audit import generate_key, save_keypair
    from gateway.wiring import write_dev_users

    gw.mkdir(parents=True, exist_ok=True)
    (gw / "mask.key").touch(mode=0o600)  # a secret: `gateway serve` refuses a group-readable one
    (gw / "mask.key").write_text(os.urandom(32).hex())
    keys = write_dev_users(gw / "users.json")
    save_keypair(generate_key(), gw / "audit")
    section: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "mask_key_file": "mask.key",
        "users_file": "users.json",
        "audit_db": "audit.sqlite",
        "audit_key": "audit.key.pem",
        "state_dir": "state",
        "policy_dir": str(policies),
        "insecure": True,
        "rate_per_s": 50.0,
        "rate_burst": 100.0,
        **overrides,
    }
    return keys, section
