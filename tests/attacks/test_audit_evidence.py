"""Attacks on the audit evidence by whoever controls the gateway host: its database and log key,
not the witnesses' keys. Each was found to pass (or to crash the tools) before its fix.

* A subject report built from REST views proved one altered entry against a forked checkpoint
  signed with the log key alone; only the largest checkpoint was held to the witness quorum.
* An entry appended today but dated weeks ago passed `verify-log` with a full witness quorum
  (witnesses see roots, not times), and period queries filed it in the past.
* `audit report --db` found the subject's entries through the lookup index without verifying it:
  deleting the subject's index rows gave "Nobody accessed this person's data".
* One witness key configured under two names counted twice towards the quorum.
* Malformed values in the database or a bundle crashed the tools with a traceback.
* A witness that had cosigned an empty log refused every honest checkpoint after it as forked.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from audit import merkle
from audit.bundle import verify_bundle
from audit.checkpoints import Checkpoint, CosignatureVerifier, Signer, generate_key, load_public_key, save_keypair
from audit.quorum import Quorum
from audit.records import Actor, AuditRecord
from audit.report import report_from_views
from audit.store import AuditLog
from audit.testing import pseudonym, record
from audit.verify import verify_log
from audit.witness import Witness
from xgate.errors import IntegrityError, InvalidInput

ORIGIN = "xgate.gateway/audit"
WITNESS = "xgate.node.tax/witness"
SUBJECT = pseudonym(1)
T0 = datetime(2026, 3, 4, 1, 0, tzinfo=UTC)


def _access(minutes: int, user: str, request_id: str, legal_basis: str) -> AuditRecord:
    return AuditRecord(
        kind="policy_decision", time=T0 + timedelta(minutes=minutes),
        actor=Actor(user=user, agency="civil_affairs", role="caseworker"), request_id=request_id,
        program="dibao", purpose="dibao", legal_basis=legal_basis, decision="allow", subjects=(SUBJECT,),
    )  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    log_key, witness_key = generate_key(), generate_key()
    save_keypair(log_key, tmp_path / "log")
    save_keypair(witness_key, tmp_path / "w")
    signer = Signer(ORIGIN, log_key)
    witness = Witness(WITNESS, witness_key, signer.verifier(), ORIGIN, None)
    return {"log": log_key, "signer": signer, "witness": witness, "dir": tmp_path}


def _xgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120)


def test_a_report_refuses_an_entry_proven_against_a_checkpoint_the_witnesses_did_not_cosign(keys: Any) -> None:
    real = [
        _access(0, "cw-zhang", "r1", "SAR-2014-art-12"),
        _access(5, "cw-snoop", "r2", "NONE-curiosity"),  # the access the host wants to launder
        _access(9, "cw-li", "r3", "SAR-2014-art-12"),
    ]
    with AuditLog.open(keys["dir"] / "audit.db", signer=keys["signer"], origin=ORIGIN) as log:
        log.append_many(real)
        cp = log.publish_checkpoint()
        cp = log.add_cosignature(cp.checkpoint.size, keys["witness"].cosign(cp.text()), keys["witness"].verifier())
        size = cp.checkpoint.size
        views = [
            {"index": e.index, "record": json.loads(e.data), "leaf_hash": e.leaf_hash.hex(),
             "checkpoint": {"note": cp.text()},
             "inclusion_proof": [h.hex() for h in log.inclusion_proof(e.index, size)]}
            for e in log.entries(limit=10)
        ]  # fmt: skip
    common: dict[str, Any] = {
        "pseudonym": SUBJECT, "since": None, "until": None, "generated": T0,
        "witnesses": [keys["witness"].verifier()], "quorum": 1,
    }  # fmt: skip
    honest = report_from_views(ORIGIN, keys["log"].public_key(), views, {}, **common)
    assert [r.legal_basis for r in honest.rows] == ["SAR-2014-art-12", "NONE-curiosity", "SAR-2014-art-12"]
    # The host forks a 2-entry tree with the access laundered and signs it with the log key alone.
    laundered = _access(5, "cw-snoop", "r2", "SAR-2014-art-12")
    leaves = [merkle.leaf_hash(real[0].canonical()), merkle.leaf_hash(laundered.canonical())]
    fork = keys["signer"].sign(Checkpoint(ORIGIN, 2, merkle.root_of(leaves)))
    views[1] = {
        "index": 1, "record": json.loads(laundered.canonical()), "leaf_hash": leaves[1].hex(),
        "checkpoint": {"note": fork.text()},
        "inclusion_proof": [h.hex() for h in merkle.inclusion_proof(1, 2, merkle.fetch_from_leaves(leaves))],
    }  # fmt: skip
    with pytest.raises(IntegrityError, match="proven against different checkpoints"):
        report_from_views(ORIGIN, keys["log"].public_key(), views, {}, **common)


def test_a_back_dated_entry_fails_verification_even_with_every_cosignature(keys: Any) -> None:
    day1, day30 = T0, T0 + timedelta(days=29)
    db = keys["dir"] / "audit.db"
    with AuditLog.open(db, signer=keys["signer"], origin=ORIGIN) as log:
        log.append(record(1, kind="policy_decision", decision="allow", time=day1 + timedelta(hours=1)))
        cp = log.publish_checkpoint()
        log.add_cosignature(cp.checkpoint.size, keys["witness"].cosign(cp.text()))
        log.append(record(2, time=day30))
        log.append(record(3, kind="consent_change", time=day1))  # written on day 30, dated day 1
        old = cp.checkpoint.size
        cp = log.publish_checkpoint()
        note, proof = log.witness_request(old)
        log.add_cosignature(cp.checkpoint.size, keys["witness"].cosign(note, proof, old_size=old))
    with pytest.raises(IntegrityError, match="back-dated") as info:
        verify_log(db, keys["log"].public_key(), witnesses=[keys["witness"].verifier()])
    assert info.value.details["index"] == 2
    # Records stamped when made and appended a little out of order (the writer's batches) pass.
    honest = keys["dir"] / "honest.db"
    with AuditLog.open(honest, signer=keys["signer"], origin=ORIGIN) as log:
        log.append_many([record(4, time=day1 + timedelta(seconds=30)), record(5, time=day1)])
        log.publish_checkpoint()
    assert verify_log(honest, keys["log"].public_key()).size == 2


def test_the_report_from_a_database_verifies_the_index_it_searches(keys: Any) -> None:
    db = keys["dir"] / "audit.db"
    with AuditLog.open(db, signer=keys["signer"], origin=ORIGIN) as log:
        log.append_many([record(i, kind="policy_decision", decision="allow") for i in range(3)])
        log.publish_checkpoint()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM entry_subjects WHERE pseudonym = ?", (pseudonym(1),))
    out = keys["dir"] / "report.html"
    done = _xgate("audit", "report", "--db", str(db), "--key", str(keys["dir"] / "log.pub.pem"),
                  "--pseudonym", pseudonym(1), "--out", str(out))  # fmt: skip
    assert done.returncode == 1 and "subject index disagrees" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_one_witness_key_under_two_names_is_refused(keys: Any) -> None:
    """The cosigned message does not name the witness: a host could copy one cosignature line
    under the second name and meet a 2-of-2 quorum with one witness."""
    key = load_public_key(keys["dir"] / "w.pub.pem")
    with pytest.raises(InvalidInput, match="one witness key is named twice"):
        Quorum.of([CosignatureVerifier(WITNESS, key), CosignatureVerifier("xgate.node.hrss/witness", key)], 2)


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE checkpoints SET note = CAST(note AS BLOB)",
        "UPDATE meta SET value = CAST(value AS BLOB) WHERE key = 'origin'",
        "UPDATE entries SET leaf_hash = -1 WHERE idx = 1",
    ],
)
def test_malformed_database_values_fail_verification_with_a_reason(keys: Any, damage: str) -> None:
    db = keys["dir"] / "audit.db"
    with AuditLog.open(db, signer=keys["signer"], origin=ORIGIN) as log:
        log.append_many([record(i) for i in range(3)])
        log.publish_checkpoint()
    with sqlite3.connect(db) as conn:
        conn.execute(damage)
    with pytest.raises(IntegrityError, match="malformed value"):
        verify_log(db, keys["log"].public_key())
    done = _xgate("audit", "verify-log", "--db", str(db), "--key", str(keys["dir"] / "log.pub.pem"))
    assert done.returncode == 1 and "FAILED" in done.stdout + done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("checkpoint", [5, {"note": "x"}])
def test_a_malformed_bundle_fails_verification_with_a_reason(keys: Any, checkpoint: object) -> None:
    bundle = {"format": "xgate-audit-bundle/1", "checkpoint": checkpoint, "origin": ORIGIN, "entries": []}
    with pytest.raises(IntegrityError, match=r"malformed|not an xgate"):
        verify_bundle(bundle, keys["log"].public_key())


def test_a_witness_that_cosigned_an_empty_log_cosigns_what_follows(keys: Any) -> None:
    with AuditLog.open(keys["dir"] / "audit.db", signer=keys["signer"], origin=ORIGIN) as log:
        empty = log.publish_checkpoint()
        keys["witness"].cosign(empty.text())
        log.append(record(1))
        cp = log.publish_checkpoint()
        note, proof = log.witness_request(0)
        assert keys["witness"].cosign(note, proof, old_size=0)  # not "forked"
        assert cp.checkpoint.size == 1
