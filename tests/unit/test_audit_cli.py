"""`xgate audit` commands: keygen, verify-log, export, bundle, verify-bundle; exit codes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from app.cli import app
from audit.checkpoints import Signer, generate_key, load_private_key, save_keypair
from audit.store import AuditLog
from audit.testing import ORIGIN, record

runner = CliRunner()


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    r = runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path / "log")])
    assert r.exit_code == 0, r.output
    priv, pub = tmp_path / "log.key.pem", tmp_path / "log.pub.pem"
    db = tmp_path / "audit.db"
    with AuditLog.open(db, signer=Signer(ORIGIN, load_private_key(priv)), origin=ORIGIN) as log:
        log.append_many([record(i, request_id=f"r-{i % 4}") for i in range(20)])
        log.publish_checkpoint()
        log.append(record(99, request_id="r-late"))
    return db, priv, pub


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    assert runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path / "k")]).exit_code == 0
    r = runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path / "k")])
    assert r.exit_code == 1 and "overwrite" in r.output
    # The private half gone, the public half stays: it replaced the key every witness verified with.
    (tmp_path / "k.key.pem").unlink()
    public = (tmp_path / "k.pub.pem").read_text()
    for command in (["audit", "keygen"], ["keys", "audit"]):
        r = runner.invoke(app, [*command, "--out", str(tmp_path / "k")])
        assert r.exit_code != 0 and "k.pub.pem" in r.output, r.output
    assert (tmp_path / "k.pub.pem").read_text() == public and not (tmp_path / "k.key.pem").exists()
    # A directory is no prefix: `--out .` wrote "..key.pem".
    r = runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "a path prefix is needed" in r.output, r.output


def test_keys_are_never_written_through_a_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "pseudonym.key").symlink_to(tmp_path / "elsewhere" / "taken.key")
    r = runner.invoke(app, ["keys", "pseudonym", "--out", str(tmp_path / "pseudonym.key")])
    assert r.exit_code != 0 and "already exists" in r.output, r.output
    assert not (tmp_path / "elsewhere").exists()


def test_verify_log_ok_then_tampered(tmp_path: Path) -> None:
    db, _, pub = _setup(tmp_path)
    r = runner.invoke(app, ["audit", "verify-log", "--db", str(db), "--key", str(pub)])
    assert r.exit_code == 0 and "OK" in r.output and "21 entries" in r.output and "1 entries not yet" in r.output
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM entries WHERE idx=3")
    conn.commit()
    conn.close()
    r = runner.invoke(app, ["audit", "verify-log", "--db", str(db), "--key", str(pub)])
    assert r.exit_code == 1 and "FAILED" in r.output


def test_verify_log_with_wrong_key_fails(tmp_path: Path) -> None:
    db, _, _ = _setup(tmp_path)
    runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path / "other")])
    r = runner.invoke(app, ["audit", "verify-log", "--db", str(db), "--key", str(tmp_path / "other.pub.pem")])
    assert r.exit_code == 1 and "not signed" in r.output


def test_export(tmp_path: Path) -> None:
    db, _, _ = _setup(tmp_path)
    r = runner.invoke(app, ["audit", "export", "--db", str(db), "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0
    lines = (tmp_path / "exp" / "entries.jsonl").read_text().splitlines()
    assert len(lines) == 21 and json.loads(lines[0])["index"] == 0
    assert json.loads((tmp_path / "exp" / "manifest.json").read_text())["checkpoints"] == 1


def test_bundle_and_verify_bundle(tmp_path: Path) -> None:
    db, priv, pub = _setup(tmp_path)
    out = tmp_path / "b.json"
    r = runner.invoke(app, ["audit", "bundle", "r-2", "--db", str(db), "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["audit", "verify-bundle", str(out), "--key", str(pub)])
    assert r.exit_code == 0 and "5 entries" in r.output
    # The late entry is not under any checkpoint: without the signing key the bundle is refused...
    r = runner.invoke(app, ["audit", "bundle", "r-late", "--db", str(db), "--out", str(out)])
    assert r.exit_code != 0 and "checkpoint" in r.output
    # Another party's key is refused before anything is written: it appended a checkpoint that no
    # verification of the log accepted ever after (review).
    other = tmp_path / "other"
    save_keypair(generate_key(), other)
    r = runner.invoke(app, ["audit", "bundle", "r-late", "--db", str(db), "--out", str(out),
                            "--sign-key", f"{other}.key.pem"])  # fmt: skip
    assert r.exit_code == 1 and "not this log's key" in r.output, r.output
    r = runner.invoke(app, ["audit", "verify-log", "--db", str(db), "--key", str(pub)])
    assert r.exit_code == 0 and "OK" in r.output, r.output
    # ...with it, a fresh checkpoint is published first.
    r = runner.invoke(app, ["audit", "bundle", "r-late", "--db", str(db), "--out", str(out), "--sign-key", str(priv)])
    assert r.exit_code == 0, r.output
    bundle = json.loads(out.read_text())
    bundle["entries"][0]["inclusion_proof"][0] = "00" * 32
    out.write_text(json.dumps(bundle))
    r = runner.invoke(app, ["audit", "verify-bundle", str(out), "--key", str(pub)])
    assert r.exit_code == 1 and "FAILED" in r.output


def test_unknown_request_is_a_clear_error(tmp_path: Path) -> None:
    db, _, _ = _setup(tmp_path)
    r = runner.invoke(app, ["audit", "bundle", "nope", "--db", str(db), "--out", str(tmp_path / "b.json")])
    assert r.exit_code == 1 and "no audit entries" in r.output


def test_a_log_with_no_checkpoint_says_the_key_was_not_used(tmp_path: Path) -> None:
    """It printed a plain "OK" for any key at all, another party's included."""
    db = tmp_path / "a.db"
    with AuditLog.open(db, origin=ORIGIN) as log:
        log.append(record(1))
    assert runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path / "other")]).exit_code == 0
    r = runner.invoke(app, ["audit", "verify-log", "--db", str(db), "--key", str(tmp_path / "other.pub.pem")])
    assert r.exit_code == 0 and r.output.startswith("OK, HASHES ONLY:") and "--key was not used" in r.output


def test_a_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    """An export of a file that is no audit log left an empty directory (or half its files) behind."""
    not_a_log = tmp_path / "x.db"
    sqlite3.connect(not_a_log).execute("CREATE TABLE t (a)").connection.commit()
    r = runner.invoke(app, ["audit", "export", "--db", str(not_a_log), "--out", str(tmp_path / "exp")])
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert not (tmp_path / "exp").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    r = runner.invoke(app, ["audit", "export", "--db", str(not_a_log), "--out", str(tmp_path / "mine")])
    assert r.exit_code != 0 and sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
