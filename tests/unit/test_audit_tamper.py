"""Tampering with the stored log is caught by verify_log, verify_bundle and witnesses."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from audit import merkle
from audit.bundle import build_bundle, verify_bundle
from audit.checkpoints import Checkpoint, Signer, add_cosignature, generate_key
from audit.store import AuditLog
from audit.testing import ORIGIN, log_signer, record, witness_cosigner
from audit.verify import verify_log
from audit.witness import Witness, WitnessConflict
from xgate.errors import IntegrityError

N = 40


@pytest.fixture
def built(tmp_path: Path) -> dict[str, Any]:
    signer = log_signer()
    path = tmp_path / "audit.db"
    with AuditLog.open(path, signer=signer, origin=ORIGIN) as log:
        log.append_many([record(i, request_id=f"req-{i % 10}") for i in range(N // 2)])
        cp1 = log.publish_checkpoint()
        log.append_many([record(i, request_id=f"req-{i % 10}") for i in range(N // 2, N)])
        cp2 = log.publish_checkpoint()
        bundle = build_bundle(log, "req-3")
    return {"path": path, "signer": signer, "pub": signer._key.public_key(), "cp1": cp1, "cp2": cp2, "bundle": bundle}


def _sql(path: Path, *stmts: str, args: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    for s in stmts:
        conn.execute(s, args) if args else conn.execute(s)
    conn.commit()
    conn.close()


def test_untouched_log_verifies(built: dict[str, Any]) -> None:
    report = verify_log(built["path"], built["pub"])
    assert (report.size, report.checkpoints, report.unsigned_tail) == (N, 2, 0)
    assert report.root == built["cp2"].checkpoint.root


def test_one_changed_byte_in_entry_data(built: dict[str, Any]) -> None:
    conn = sqlite3.connect(built["path"])
    data = bytearray(conn.execute("SELECT data FROM entries WHERE idx=7").fetchone()[0])
    data[data.index(b"dibao")] ^= 0x01  # 'dibao' -> 'eibao'
    conn.execute("UPDATE entries SET data=? WHERE idx=7", (bytes(data),))
    conn.commit()
    conn.close()
    with pytest.raises(IntegrityError, match="leaf hash"):
        verify_log(built["path"], built["pub"])


def test_changed_entry_with_recomputed_leaf_hash(built: dict[str, Any]) -> None:
    forged = record(7, user="someone-else")
    _sql(
        built["path"],
        "UPDATE entries SET data=?, leaf_hash=? WHERE idx=7",
        args=(forged.canonical(), merkle.leaf_hash(forged.canonical())),
    )
    with pytest.raises(IntegrityError):
        verify_log(built["path"], built["pub"])


def test_index_column_changed_to_hide_an_entry(built: dict[str, Any]) -> None:
    _sql(built["path"], "UPDATE entries SET user='nobody' WHERE idx=3")
    with pytest.raises(IntegrityError, match="index columns"):
        verify_log(built["path"], built["pub"])


def test_subject_index_row_removed(built: dict[str, Any]) -> None:
    _sql(built["path"], "DELETE FROM entry_subjects WHERE idx=5")
    with pytest.raises(IntegrityError, match="subject index"):
        verify_log(built["path"], built["pub"])


def test_request_index_row_moved(built: dict[str, Any]) -> None:
    # Hiding an entry from a request's evidence bundle by re-pointing its request index row.
    _sql(built["path"], "UPDATE entry_requests SET idx=6 WHERE idx=3")
    with pytest.raises(IntegrityError, match="request index"):
        verify_log(built["path"], built["pub"])


def test_index_row_beyond_the_index_mark(built: dict[str, Any]) -> None:
    # Rows above the mark would be invisible to lookups (readers scan the entries there instead).
    _sql(built["path"], f"UPDATE meta SET value='{N - 5}' WHERE key='indexed_upto'")
    with pytest.raises(IntegrityError, match="index disagrees"):
        verify_log(built["path"], built["pub"])


def test_deleted_entry(built: dict[str, Any]) -> None:
    _sql(built["path"], "DELETE FROM entries WHERE idx=12")
    with pytest.raises(IntegrityError, match="contiguous"):
        verify_log(built["path"], built["pub"])


def test_reordered_entries(built: dict[str, Any]) -> None:
    _sql(
        built["path"],
        "UPDATE entries SET idx=-1 WHERE idx=4",
        "UPDATE entries SET idx=4 WHERE idx=5",
        "UPDATE entries SET idx=5 WHERE idx=-1",
        "UPDATE entry_subjects SET idx=-1 WHERE idx=4",
        "UPDATE entry_subjects SET idx=4 WHERE idx=5",
        "UPDATE entry_subjects SET idx=5 WHERE idx=-1",
        "UPDATE entry_requests SET idx=-1 WHERE idx=4",
        "UPDATE entry_requests SET idx=4 WHERE idx=5",
        "UPDATE entry_requests SET idx=5 WHERE idx=-1",
    )
    with pytest.raises(IntegrityError, match="tree node"):
        verify_log(built["path"], built["pub"])


def test_truncated_tail(built: dict[str, Any]) -> None:
    _sql(
        built["path"],
        f"DELETE FROM entries WHERE idx >= {N - 3}",
        f"DELETE FROM entry_subjects WHERE idx >= {N - 3}",
        f"DELETE FROM entry_requests WHERE idx >= {N - 3}",
    )
    with pytest.raises(IntegrityError, match="truncated"):
        verify_log(built["path"], built["pub"])


def test_truncated_tail_with_nodes_and_checkpoint_removed_too(built: dict[str, Any]) -> None:
    # A careful truncation removes nodes and the newest checkpoint as well; the older checkpoint
    # still verifies, so verify_log passes — only a witness that saw size N catches it.
    keep = N // 2
    _sql(
        built["path"],
        f"DELETE FROM entries WHERE idx >= {keep}",
        f"DELETE FROM entry_subjects WHERE idx >= {keep}",
        f"DELETE FROM entry_requests WHERE idx >= {keep}",
        f"UPDATE meta SET value='{keep}' WHERE key='indexed_upto'",
        f"DELETE FROM nodes WHERE ((idx + 1) << level) > {keep}",
        f"DELETE FROM checkpoints WHERE size > {keep}",
    )
    assert verify_log(built["path"], built["pub"]).size == keep
    witness = Witness("w.tax", generate_key(), built["signer"].verifier(), ORIGIN, None)
    witness.cosign(built["cp2"].text())
    with pytest.raises(IntegrityError, match="truncated"):
        witness.cosign(built["cp1"].text(), old_size=N)


def test_forged_checkpoint_row(built: dict[str, Any]) -> None:
    _sql(built["path"], "UPDATE checkpoints SET root=zeroblob(32) WHERE size=?", args=(N,))
    with pytest.raises(IntegrityError, match="checkpoint row"):
        verify_log(built["path"], built["pub"])


def test_forked_history_resigned_by_a_different_key(built: dict[str, Any], tmp_path: Path) -> None:
    # Rebuild a different history in place and sign it with a key that is not the log's.
    fork = tmp_path / "fork.db"
    impostor = Signer(ORIGIN, generate_key())
    with AuditLog.open(fork, signer=impostor, origin=ORIGIN) as log:
        log.append_many([record(i + 1000) for i in range(N)])
        log.publish_checkpoint()
    with pytest.raises(IntegrityError, match="not signed by the expected log key"):
        verify_log(fork, built["pub"])


def test_forked_history_with_the_stolen_log_key_is_caught_by_witnesses(built: dict[str, Any], tmp_path: Path) -> None:
    witness_key = generate_key()
    w = Witness("w.tax", witness_key, built["signer"].verifier(), ORIGIN, tmp_path / "w.json")
    w.cosign(built["cp1"].text())
    # Attacker with the log key rewrites history from entry 0 and publishes a bigger checkpoint.
    fork = tmp_path / "fork.db"
    with AuditLog.open(fork, signer=built["signer"], origin=ORIGIN) as log:
        log.append_many([record(i + 1000) for i in range(N)])
        forged = log.publish_checkpoint()
        bogus_proof = log.consistency_proof(N // 2, N)
    assert verify_log(fork, built["pub"]).size == N  # the key alone cannot tell
    with pytest.raises(IntegrityError, match="forked"):
        w.cosign(forged.text(), bogus_proof, old_size=N // 2)
    # Same size, different root: also a fork. The witness state survives a restart.
    w2 = Witness("w.tax", witness_key, built["signer"].verifier(), ORIGIN, tmp_path / "w.json")
    assert w2.state is not None and w2.state.size == N // 2
    same_size = built["signer"].sign(Checkpoint(ORIGIN, N // 2, bytes(32)))
    with pytest.raises(IntegrityError, match="forked"):
        w2.cosign(same_size.text())


def test_witness_accepts_honest_growth_and_reports_stale_views(built: dict[str, Any], tmp_path: Path) -> None:
    cos = witness_cosigner("w.hrss")
    w = Witness("w.hrss", cos._key, built["signer"].verifier(), ORIGIN, tmp_path / "w.json")
    w.cosign(built["cp1"].text(), old_size=0)
    with AuditLog.open(built["path"], signer=built["signer"], origin=ORIGIN) as log:
        note, proof = log.witness_request(N // 2)
        line = w.cosign(note, proof, old_size=N // 2)
        merged = log.add_cosignature(N, line, w.verifier())
    w.verifier().verify(merged)
    with pytest.raises(WitnessConflict) as info:
        w.cosign(note, proof, old_size=N // 2)
    assert info.value.details["witness_size"] == N


def test_witness_refuses_bad_log_signature_and_other_origin(built: dict[str, Any]) -> None:
    w = Witness("w.tax", generate_key(), built["signer"].verifier(), ORIGIN, None)
    impostor = Signer(ORIGIN, generate_key())
    with pytest.raises(IntegrityError, match="not signed"):
        w.cosign(impostor.sign(built["cp1"].checkpoint).text())
    other = Signer("other.example/log", built["signer"]._key)
    w_other = Witness("w.tax", generate_key(), other.verifier(), ORIGIN, None)
    with pytest.raises(IntegrityError, match="origin"):
        w_other.cosign(other.sign(Checkpoint("other.example/log", 1, bytes(32))).text())


# -- bundles ---------------------------------------------------------------------------------


def test_bundle_verifies_offline(built: dict[str, Any]) -> None:
    report = verify_bundle(built["bundle"], built["pub"])
    assert report.entries == N // 10 and report.checkpoint_size == N


def _mutated(bundle: dict[str, Any], how: str) -> dict[str, Any]:
    b = copy.deepcopy(bundle)
    e = b["entries"][0]
    if how == "data":
        import base64

        raw = bytearray(base64.b64decode(e["data_b64"]))
        raw[raw.index(b"dibao")] ^= 1
        e["data_b64"] = base64.b64encode(bytes(raw)).decode()
    elif how == "data_and_leaf":
        forged = record(3, user="x", request_id=b["request_id"]).canonical()
        import base64

        e["data_b64"] = base64.b64encode(forged).decode()
        e["leaf_hash"] = merkle.leaf_hash(forged).hex()
    elif how == "readable_copy":
        e["record"]["actor"]["user"] = "x"
    elif how == "proof":
        e["inclusion_proof"][0] = "00" * 32
    elif how == "index":
        e["index"] += 1
    elif how == "checkpoint_root":
        b["checkpoint"] = b["checkpoint"].replace(b["checkpoint"].split("\n")[2], "A" * 43 + "=")
    elif how == "checkpoint_size":
        b["checkpoint"] = b["checkpoint"].replace(f"\n{N}\n", f"\n{N + 1}\n", 1)
    elif how == "request":
        b["request_id"] = "req-4"
    elif how == "format":
        b["format"] = "other"
    elif how == "empty":
        b["entries"] = []
    elif how == "garbage":
        e["inclusion_proof"] = "zz"
    return b


@pytest.mark.parametrize(
    "how",
    ["data", "data_and_leaf", "readable_copy", "proof", "index", "checkpoint_root", "checkpoint_size", "request",
     "format", "empty", "garbage"],
)  # fmt: skip
def test_mutated_bundle_is_rejected(built: dict[str, Any], how: str) -> None:
    with pytest.raises(IntegrityError):
        verify_bundle(_mutated(built["bundle"], how), built["pub"])


def test_bundle_with_wrong_key_or_missing_witness_is_rejected(built: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError):
        verify_bundle(built["bundle"], generate_key().public_key())
    with pytest.raises(IntegrityError, match=r"0 of the 1 witness cosignatures required; missing: witness.tax"):
        verify_bundle(built["bundle"], built["pub"], witnesses=[witness_cosigner().verifier()])


def test_bundle_with_witness_cosignature(built: dict[str, Any]) -> None:
    cos = witness_cosigner()
    b = copy.deepcopy(built["bundle"])
    cp = add_cosignature(b["checkpoint"], cos.cosign(built["cp2"].checkpoint, 1_800_000_000))
    b["checkpoint"] = cp.text()
    assert verify_bundle(b, built["pub"], witnesses=[cos.verifier()]).witnesses == (cos.name,)
