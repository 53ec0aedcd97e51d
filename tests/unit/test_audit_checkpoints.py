"""Checkpoints: C2SP signed-note format, Ed25519 signatures, cosignatures, key files."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from audit.checkpoints import (
    Checkpoint,
    CosignatureVerifier,
    NoteVerifier,
    Signer,
    add_cosignature,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    parse_signed_note,
    raw_public,
    save_keypair,
)
from audit.testing import witness_cosigner
from xgate.errors import CryptoError, IntegrityError

ORIGIN = "xgate.example/audit"
ROOT = bytes(range(32))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer(ORIGIN, generate_key())


def test_note_layout_follows_signed_note(signer: Signer) -> None:
    text = signer.sign(Checkpoint(ORIGIN, 12, ROOT)).text()
    lines = text.split("\n")
    assert lines[:4] == [ORIGIN, "12", base64.b64encode(ROOT).decode(), ""]
    assert lines[4].startswith(f"\u2014 {ORIGIN} ") and lines[5] == ""
    raw = base64.b64decode(lines[4].split(" ")[2])
    assert raw[:4] == key_id(ORIGIN, 0x01, raw_public(signer._key)) and len(raw) == 4 + 64


def test_sign_verify_parse_roundtrip(signer: Signer) -> None:
    signed = signer.sign(Checkpoint(ORIGIN, 7, ROOT, ("ext line",)))
    assert signer.verifier().verify(signed.text()) == signed
    assert parse_signed_note(signed.text()) == signed


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace("\n7\n", "\n8\n", 1),
        lambda t: t.replace(ORIGIN + "\n", "evil.example/audit\n", 1),
        lambda t: t.replace("\n\n", "\nextra\n\n", 1),
        lambda t: t[:-10] + ("A" if t[-10] != "A" else "B") + t[-9:],
    ],
)
def test_tampered_note_is_rejected(signer: Signer, mutate) -> None:  # type: ignore[no-untyped-def]
    text = signer.sign(Checkpoint(ORIGIN, 7, ROOT)).text()
    with pytest.raises(IntegrityError):
        signer.verifier().verify(mutate(text))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "origin\n1\nAAAA\n",
        "origin\n01\n" + base64.b64encode(ROOT).decode() + "\n\n\u2014 a AAAAAAA=\n",
        "origin\n-1\n" + base64.b64encode(ROOT).decode() + "\n\n\u2014 a AAAAAAA=\n",
        "origin\n1\n" + base64.b64encode(ROOT[:31]).decode() + "\n\n\u2014 a AAAAAAA=\n",
        "origin\n1\n" + base64.b64encode(ROOT).decode() + "\n\n- a AAAAAAA=\n",
        "origin\n1\n" + base64.b64encode(ROOT).decode() + "\n\n\u2014 a !!!\n",
        "origin\r\n1\n" + base64.b64encode(ROOT).decode() + "\n\n\u2014 a AAAAAAA=\n",
        # non-ASCII base64 used to escape as a bare ValueError (found by tests/unit/test_golden_formats.py)
        "origin\n1\n" + base64.b64encode(ROOT).decode() + "\n\n\u2014 a AAAA\u00e9AA=\n",
        "origin\n1\n\u00e9" + base64.b64encode(ROOT).decode()[1:] + "\n\n\u2014 a AAAAAAA=\n",
    ],
)
def test_malformed_notes_are_rejected(text: str) -> None:
    with pytest.raises(IntegrityError):
        parse_signed_note(text)


def test_wrong_key_or_name_is_rejected(signer: Signer) -> None:
    text = signer.sign(Checkpoint(ORIGIN, 1, ROOT)).text()
    with pytest.raises(IntegrityError, match="not signed"):
        NoteVerifier(ORIGIN, generate_key().public_key()).verify(text)
    with pytest.raises(IntegrityError, match="not signed"):
        NoteVerifier("other.example/audit", signer._key.public_key()).verify(text)


def test_cosignature_v1(signer: Signer) -> None:
    cos = witness_cosigner()
    cp = Checkpoint(ORIGIN, 3, ROOT)
    line = cos.cosign(cp, 1_679_315_147)
    merged = add_cosignature(signer.sign(cp), line.text())
    assert cos.verifier().verify(merged.text()) == 1_679_315_147
    assert signer.verifier().verify(merged.text()).checkpoint == cp
    # Replacing a cosignature from the same key keeps one line per witness.
    again = add_cosignature(merged, cos.cosign(cp, 1_679_315_200))
    assert len(again.signatures) == 2 and cos.verifier().verify(again) == 1_679_315_200
    # A cosignature moved onto another checkpoint does not verify.
    other = add_cosignature(signer.sign(Checkpoint(ORIGIN, 4, ROOT)), line)
    with pytest.raises(IntegrityError, match="cosignature does not verify"):
        cos.verifier().verify(other)
    with pytest.raises(IntegrityError, match="not cosigned"):
        CosignatureVerifier(cos.name, generate_key().public_key()).verify(merged)


def test_key_files_roundtrip_and_refusals(tmp_path: Path) -> None:
    key = generate_key()
    priv, pub = save_keypair(key, tmp_path / "log")
    assert priv.stat().st_mode & 0o077 == 0
    assert raw_public(load_private_key(priv)) == raw_public(load_public_key(pub)) == raw_public(key)
    with pytest.raises(FileExistsError):
        save_keypair(key, tmp_path / "log")
    with pytest.raises(CryptoError):
        load_private_key(pub)
    with pytest.raises(CryptoError):
        load_public_key(priv)
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(CryptoError):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(CryptoError):
        Signer("bad name", key)
