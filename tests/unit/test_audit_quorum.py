"""The witness quorum rule: verify-log and verify-bundle agree, and every tamper case fails with witnesses named.

Issue 14 item 1: a history re-signed with the real log key and stripped of cosignatures passed
`verify-log --witness` ("0 cosignatures verified"). Now the latest checkpoint (and any checkpoint the
officer names) must carry valid cosignatures from at least k of the named witnesses.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app
from audit import merkle
from audit.bundle import build_bundle, verify_bundle, write_bundle
from audit.checkpoints import Cosigner, Signer, generate_key, save_keypair
from audit.quorum import Quorum
from audit.store import AuditLog
from audit.testing import ORIGIN, record
from audit.verify import verify_log
from audit.witness import Witness
from tests.audit_tamper import truncate_log
from xgate.errors import IntegrityError, InvalidInput

N = 40
NAMES = ("w.tax", "w.hrss", "w.civil")
runner = CliRunner()


def _cosign_all(log: AuditLog, witnesses: list[Witness], witnessed: dict[str, int]) -> None:
    cp = log.latest_checkpoint()
    assert cp is not None
    for w in witnesses:
        old = witnessed.get(w.name, 0)
        note, proof = log.witness_request(old)
        line = w.cosign(note, proof, old_size=old)
        log.add_cosignature(cp.checkpoint.size, line, w.verifier())
        witnessed[w.name] = cp.checkpoint.size


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    signer = Signer(ORIGIN, generate_key())
    keys = {name: generate_key() for name in NAMES}
    witnesses = [Witness(n, keys[n], signer.verifier(), ORIGIN, tmp_path / f"{n}.json") for n in NAMES]
    path = tmp_path / "audit.db"
    witnessed: dict[str, int] = {}
    with AuditLog.open(path, signer=signer, origin=ORIGIN) as log:
        log.append_many([record(i, request_id=f"req-{i % 10}") for i in range(N // 2)])
        log.publish_checkpoint()
        _cosign_all(log, witnesses, witnessed)
        cp1 = log.checkpoint_at(N // 2)  # with its cosignatures
        log.append_many([record(i, request_id=f"req-{i % 10}") for i in range(N // 2, N)])
        log.publish_checkpoint()
        _cosign_all(log, witnesses, witnessed)
        cp2 = log.latest_checkpoint()
        bundle = build_bundle(log, "req-3", publish=False)
    assert cp2 is not None
    return {
        "path": path,
        "signer": signer,
        "pub": signer._key.public_key(),
        "keys": keys,
        "verifiers": [w.verifier() for w in witnesses],
        "witness_objs": witnesses,
        "cp1": cp1.text(),
        "cp2": cp2.text(),
        "bundle": bundle,
        "tmp": tmp_path,
    }


def _sql(path: Path, *stmts: str) -> None:
    conn = sqlite3.connect(path)
    for s in stmts:
        conn.execute(s)
    conn.commit()
    conn.close()


def test_untouched_log_meets_the_quorum(world: dict[str, Any]) -> None:
    report = verify_log(world["path"], world["pub"], witnesses=world["verifiers"], named=[world["cp1"], world["cp2"]])
    assert report.cosigned_by == NAMES and report.quorum == 3 and report.named_checkpoints == 2
    assert verify_bundle(world["bundle"], world["pub"], witnesses=world["verifiers"]).witnesses == NAMES


# -- every tamper case of test_audit_tamper.py still fails with witnesses named -------------------


def _changed_byte(p: Path) -> None:
    conn = sqlite3.connect(p)
    data = bytearray(conn.execute("SELECT data FROM entries WHERE idx=7").fetchone()[0])
    data[data.index(b"dibao")] ^= 0x01
    conn.execute("UPDATE entries SET data=? WHERE idx=7", (bytes(data),))
    conn.commit()
    conn.close()


def _recomputed_leaf(p: Path) -> None:
    forged = record(7, user="someone-else").canonical()
    conn = sqlite3.connect(p)
    conn.execute("UPDATE entries SET data=?, leaf_hash=? WHERE idx=7", (forged, merkle.leaf_hash(forged)))
    conn.commit()
    conn.close()


TAMPER: dict[str, tuple[Callable[[Path], None], str]] = {
    "changed byte": (_changed_byte, "leaf hash"),
    "changed entry, leaf hash recomputed": (_recomputed_leaf, ""),
    "index column": (lambda p: _sql(p, "UPDATE entries SET user='nobody' WHERE idx=3"), "index columns"),
    "subject index row removed": (lambda p: _sql(p, "DELETE FROM entry_subjects WHERE idx=5"), "subject index"),
    "request index row moved": (lambda p: _sql(p, "UPDATE entry_requests SET idx=6 WHERE idx=3"), "request index"),
    "deleted entry": (lambda p: _sql(p, "DELETE FROM entries WHERE idx=12"), "contiguous"),
    "truncated tail": (
        lambda p: _sql(
            p,
            f"DELETE FROM entries WHERE idx >= {N - 3}",
            f"DELETE FROM entry_subjects WHERE idx >= {N - 3}",
            f"DELETE FROM entry_requests WHERE idx >= {N - 3}",
        ),
        "truncated",
    ),
    "forged checkpoint row": (
        lambda p: _sql(p, f"UPDATE checkpoints SET root=zeroblob(32) WHERE size={N}"),
        "checkpoint row",
    ),
    "cosignature line of a witness replaced by garbage": (
        lambda p: _sql(p, "UPDATE cosignatures SET line=replace(line, substr(line, -12, 8), 'AAAAAAAA')"),
        "",
    ),
    "cosignatures of the latest checkpoint deleted": (
        lambda p: _sql(p, "DELETE FROM cosignatures WHERE checkpoint_id=(SELECT MAX(id) FROM checkpoints)"),
        "missing: w.tax, w.hrss, w.civil",
    ),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_each_tamper_case_fails_with_witnesses_named(world: dict[str, Any], case: str) -> None:
    tamper, message = TAMPER[case]
    tamper(world["path"])
    with pytest.raises(IntegrityError, match=message):
        verify_log(world["path"], world["pub"], witnesses=world["verifiers"])


def _resigned_without_cosignatures(world: dict[str, Any]) -> Path:
    """Someone holding the real log key rewrites the whole history and re-signs it; the witnesses
    would refuse to cosign it, so it carries none."""
    fork = world["tmp"] / "fork.db"
    with AuditLog.open(fork, signer=world["signer"], origin=ORIGIN) as log:
        log.append_many([record(i + 1000, request_id=f"req-{i % 10}") for i in range(N)])
        log.publish_checkpoint()
        write_bundle(build_bundle(log, "req-3", publish=False), world["tmp"] / "fork-bundle.json")
    return fork


def test_resigned_history_without_cosignatures_fails_both_tools(world: dict[str, Any]) -> None:
    fork = _resigned_without_cosignatures(world)
    assert verify_log(fork, world["pub"]).size == N  # the log key alone cannot tell
    with pytest.raises(IntegrityError, match=r"has 0 of the 3 witness cosignatures required; missing: w.tax"):
        verify_log(fork, world["pub"], witnesses=world["verifiers"])
    forged_bundle = json.loads((world["tmp"] / "fork-bundle.json").read_text())
    with pytest.raises(IntegrityError, match=r"has 0 of the 3 witness cosignatures required; missing: w.tax"):
        verify_bundle(forged_bundle, world["pub"], witnesses=world["verifiers"])


def test_resigned_history_without_cosignatures_fails_on_the_command_line(world: dict[str, Any]) -> None:
    """The officer's exact report: all witness keys given, rc was 0. Both commands now fail alike."""
    fork = _resigned_without_cosignatures(world)
    tmp: Path = world["tmp"]
    _, pub = save_keypair(world["signer"]._key, tmp / "log")
    args: list[str] = []
    for name, key in world["keys"].items():
        _, wpub = save_keypair(key, tmp / name)
        args += ["--witness", f"{name}={wpub}"]
    r = runner.invoke(app, ["audit", "verify-log", "--db", str(fork), "--key", str(pub), *args])
    assert r.exit_code == 1 and "missing: w.tax, w.hrss, w.civil" in r.output, r.output
    r = runner.invoke(app, ["audit", "verify-bundle", str(tmp / "fork-bundle.json"), "--key", str(pub), *args])
    assert r.exit_code == 1 and "missing: w.tax, w.hrss, w.civil" in r.output, r.output
    # The honest log passes both, and says who cosigned.
    r = runner.invoke(app, ["audit", "verify-log", "--db", str(world["path"]), "--key", str(pub), *args])
    assert r.exit_code == 0 and "cosigned by 3 of the 3 witnesses required" in r.output, r.output


def _truncate_to_cp1(path: Path) -> None:
    truncate_log(path, N // 2)


def test_truncated_with_newer_checkpoints_deleted_is_caught_by_a_named_checkpoint(world: dict[str, Any]) -> None:
    _truncate_to_cp1(world["path"])
    # The older checkpoint was honestly cosigned, so the quorum on the latest alone is met...
    assert verify_log(world["path"], world["pub"], witnesses=world["verifiers"]).size == N // 2
    # ...but the officer holds the newer checkpoint (from a witness, a bundle, an earlier export).
    with pytest.raises(IntegrityError, match=f"named checkpoint at size {N} is beyond the log's {N // 2} entries"):
        verify_log(world["path"], world["pub"], witnesses=world["verifiers"], named=[world["cp2"]])


def test_truncated_to_an_uncosigned_checkpoint_fails_the_quorum(world: dict[str, Any]) -> None:
    # The truncator also deletes the old checkpoint's cosignatures to hide when it was cosigned
    # (or it was never cosigned): without cosignatures on the latest checkpoint the quorum fails.
    _truncate_to_cp1(world["path"])
    _sql(world["path"], "DELETE FROM cosignatures")
    with pytest.raises(IntegrityError, match=r"missing: w.tax, w.hrss, w.civil"):
        verify_log(world["path"], world["pub"], witnesses=world["verifiers"])


def test_named_checkpoint_of_another_history_is_refused(world: dict[str, Any]) -> None:
    fork = _resigned_without_cosignatures(world)
    with AuditLog.open(fork, origin=ORIGIN, writer="none") as log:
        other = log.latest_checkpoint()
    assert other is not None
    with pytest.raises(IntegrityError, match="another root than the log"):
        verify_log(world["path"], world["pub"], named=[other.text()])
    with pytest.raises(IntegrityError, match="named checkpoint at size 40 has 0 of the 3"):
        verify_log(world["path"], world["pub"], witnesses=world["verifiers"], named=[other.text()])


def test_quorum_k_of_n(world: dict[str, Any]) -> None:
    _sql(
        world["path"],
        "DELETE FROM cosignatures WHERE witness='w.civil' AND checkpoint_id=(SELECT MAX(id) FROM checkpoints)",
    )
    with pytest.raises(IntegrityError, match=r"2 of the 3 witness cosignatures required; missing: w.civil"):
        verify_log(world["path"], world["pub"], witnesses=world["verifiers"])
    report = verify_log(world["path"], world["pub"], witnesses=world["verifiers"], quorum=2)
    assert report.cosigned_by == ("w.tax", "w.hrss") and report.quorum == 2


def test_a_bad_cosignature_fails_whatever_the_quorum(world: dict[str, Any]) -> None:
    impostor = Cosigner("w.civil", generate_key())  # right name, wrong key: ignored, so w.civil is missing
    signed = world["bundle"]["checkpoint"]
    from audit.checkpoints import add_cosignature, parse_signed_note

    cp = parse_signed_note(signed).checkpoint
    b = dict(world["bundle"], checkpoint=add_cosignature(signed, impostor.cosign(cp, 1)).text())
    # add_cosignature replaces by (name, key id): the impostor's line sits beside the real one.
    assert verify_bundle(b, world["pub"], witnesses=world["verifiers"]).witnesses == NAMES
    # A line under the real key id whose signature does not verify is a forgery: refused even at k=1.
    real = world["verifiers"][2]
    text = b["checkpoint"].rstrip("\n").split("\n")
    import base64

    for i, line in enumerate(text):
        if line.startswith("\u2014 w.civil "):
            raw = base64.b64decode(line.split(" ")[2])
            if raw[:4] == real.key_id:
                text[i] = line.split(" ")[0] + " w.civil " + base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode()
    b["checkpoint"] = "\n".join(text) + "\n"
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_bundle(b, world["pub"], witnesses=world["verifiers"], quorum=1)


def test_quorum_arguments_are_checked() -> None:
    w = [Cosigner(n, generate_key()).verifier() for n in NAMES]
    with pytest.raises(InvalidInput, match="between 1 and the 3"):
        Quorum.of(w, 4)
    with pytest.raises(InvalidInput, match="needs witnesses"):
        Quorum.of([], 1)
    with pytest.raises(InvalidInput, match="named twice"):
        Quorum.of([w[0], w[0]])
