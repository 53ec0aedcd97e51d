"""Formats other tools read (issue 14 item 5): verifier keys in Go's note format, exported
checkpoints that carry their witness cosignatures inside the signed note (C2SP tlog-cosignature)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from Crypto.Signature import eddsa
from typer.testing import CliRunner

from app.cli import app
from audit.checkpoints import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Checkpoint,
    Cosigner,
    Signer,
    generate_key,
    open_note,
    parse_signed_note,
    parse_vkey,
    raw_public,
    save_keypair,
    vkey,
)
from audit.export import export_log
from audit.store import AuditLog
from audit.testing import ORIGIN, record
from xgate.errors import CryptoError, IntegrityError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "go_note_ed25519.json"
runner = CliRunner()


@pytest.fixture(scope="module")
def go() -> dict[str, str]:
    return dict(json.loads(VECTORS.read_text()))


def test_go_reference_vkey_and_signature(go: dict[str, str]) -> None:
    """The key in golang.org/x/mod/sumdb/note's tests: our vkey, key id and signature line match byte for byte."""
    seed = base64.b64decode(go["skey"].split("+", 4)[4])[1:]  # the key itself may hold "+"
    key = eddsa.import_private_key(seed)
    assert vkey("PeterNeumann", ALG_ED25519, raw_public(key)) == go["vkey"]
    name, alg, public = parse_vkey(go["vkey"])
    assert (name, alg, public) == ("PeterNeumann", ALG_ED25519, raw_public(key))
    line = Signer("PeterNeumann", key).key_id + eddsa.new(key, "rfc8032").sign(go["text"].encode())
    assert f"\u2014 PeterNeumann {base64.b64encode(line).decode()}" == go["signature_line"]
    note = go["text"] + "\n" + go["signature_line"] + "\n"
    assert open_note(note, [go["vkey"]]).verified_by == ("PeterNeumann",)
    with pytest.raises(IntegrityError, match="does not verify"):
        open_note(note.replace("cryptography", "cryptographY"), [go["vkey"]])


@pytest.mark.parametrize(
    "bad",
    [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # key id
        "PeterNeumanm+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # name
        "PeterNeumann+c74f20a3+AhpcuQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # type byte
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # truncated
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_mangled_vkeys_are_refused(bad: str) -> None:
    with pytest.raises(CryptoError):
        parse_vkey(bad)


def test_cosignature_vkey_and_note_open_semantics() -> None:
    log_key, w_key = generate_key(), generate_key()
    signer, cosigner = Signer(ORIGIN, log_key), Cosigner("witness.tax.example", w_key)
    cp = Checkpoint(ORIGIN, 5, bytes(range(32)))
    line = cosigner.cosign(cp, 1_700_000_000)
    note = signer.sign(cp).text().rstrip("\n") + "\n" + line.text() + "\n"
    log_vkey = vkey(ORIGIN, ALG_ED25519, raw_public(log_key))
    w_vkey = vkey("witness.tax.example", ALG_COSIGNATURE_V1, raw_public(w_key))
    assert parse_vkey(w_vkey)[1] == 0x04
    opened = open_note(note, [log_vkey, w_vkey])
    assert opened.verified_by == (ORIGIN, "witness.tax.example") and opened.text == cp.body()
    # Unknown keys are ignored, as Go does; no known signature at all is a refusal.
    assert open_note(note, [log_vkey]).unknown == ("witness.tax.example",)
    other = vkey("someone.else", ALG_ED25519, raw_public(generate_key()))
    with pytest.raises(IntegrityError, match="no signature from a known key"):
        open_note(note, [other])
    # The cosignature covers the timestamp: changing it breaks the line.
    raw = bytearray(base64.b64decode(line.text().split(" ")[2]))
    raw[4 + 7] ^= 1
    forged = note.replace(line.text().split(" ")[2], base64.b64encode(bytes(raw)).decode())
    with pytest.raises(IntegrityError, match="does not verify"):
        open_note(forged, [log_vkey, w_vkey])


def test_exported_checkpoints_carry_their_cosignatures_inside_the_note(tmp_path: Path) -> None:
    log_key, w_key = generate_key(), generate_key()
    cosigner = Cosigner("witness.tax.example", w_key)
    db = tmp_path / "audit.db"
    with AuditLog.open(db, signer=Signer(ORIGIN, log_key), origin=ORIGIN) as log:
        log.append_many([record(i) for i in range(7)])
        cp = log.publish_checkpoint()
        log.add_cosignature(7, cosigner.cosign(cp.checkpoint, 1_700_000_000).text(), cosigner.verifier())
    export_log(db, tmp_path / "exp")
    rows = [json.loads(x) for x in (tmp_path / "exp" / "checkpoints.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["signers"] == [ORIGIN, "witness.tax.example"]
    keys = [vkey(ORIGIN, ALG_ED25519, raw_public(log_key)), vkey(cosigner.name, ALG_COSIGNATURE_V1, raw_public(w_key))]
    for note in (rows[0]["note"], (tmp_path / "exp" / "checkpoint").read_text()):
        assert open_note(note, keys).verified_by == (ORIGIN, "witness.tax.example")
        assert parse_signed_note(note).checkpoint.size == 7


def test_vkey_command(tmp_path: Path) -> None:
    key = generate_key()
    _, pub = save_keypair(key, tmp_path / "log")
    db = tmp_path / "audit.db"
    with AuditLog.open(db, signer=Signer(ORIGIN, key), origin=ORIGIN):
        pass
    r = runner.invoke(app, ["audit", "vkey", "--key", str(pub), "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == vkey(ORIGIN, ALG_ED25519, raw_public(key))
    r = runner.invoke(app, ["audit", "vkey", "--key", str(pub), "--name", "w.tax", "--cosigner"])
    assert r.exit_code == 0 and parse_vkey(r.output.strip()) == ("w.tax", ALG_COSIGNATURE_V1, raw_public(key))
    r = runner.invoke(app, ["audit", "vkey", "--key", str(pub)])
    assert r.exit_code == 1 and "--name" in r.output


def test_the_golden_checkpoint_opens_with_vkeys_as_go_would() -> None:
    """tests/vectors/golden/checkpoint.note (signed and cosigned) through note.Open's rules,
    with verifier keys made from the raw keys in keys.json."""
    golden = VECTORS.parent / "golden"
    keys = json.loads((golden / "keys.json").read_text())["checkpoint"]
    log = vkey(keys["log"]["name"], ALG_ED25519, bytes.fromhex(keys["log"]["public_key"]))
    witness = vkey(keys["witness"]["name"], ALG_COSIGNATURE_V1, bytes.fromhex(keys["witness"]["public_key"]))
    note = (golden / "checkpoint.note").read_text()
    assert open_note(note, [log, witness]).verified_by == (keys["log"]["name"], keys["witness"]["name"])
