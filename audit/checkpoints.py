"""Signed tree heads: C2SP tlog-checkpoint bodies in C2SP signed-note envelopes, Ed25519 (pure).

Log signature (signed-note, algorithm 0x01):
    key id = SHA-256(name || "\\n" || 0x01 || pubkey)[:4], signature over the note body.
Witness cosignature (tlog-cosignature/v1, algorithm 0x04):
    key id = SHA-256(name || "\\n" || 0x04 || pubkey)[:4],
    signature = u64 timestamp || Ed25519("cosignature/v1\\ntime <t>\\n" || body).

A checkpoint is only as good as the party that remembers the previous one; `Witness` (witness.py)
is that party at each agency node.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from audit.merkle import HASH_SIZE
from xgate.errors import CryptoError, IntegrityError

SIG_PREFIX = "\u2014 "  # em dash + space starts every signature line
ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
MAX_NOTE_BYTES = 1 << 20

EccKey = ECC.EccKey


# -- keys ------------------------------------------------------------------------------------


def generate_key() -> EccKey:
    return ECC.generate(curve="Ed25519")


def save_keypair(key: EccKey, prefix: Path) -> tuple[Path, Path]:
    """Write ``<prefix>.key.pem`` (private, mode 0600) and ``<prefix>.pub.pem``."""
    priv, pub = Path(f"{prefix}.key.pem"), Path(f"{prefix}.pub.pem")
    priv.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.export_key(format="PEM"))
    pub.write_text(key.public_key().export_key(format="PEM"))
    return priv, pub


def _load(path: Path, private: bool) -> EccKey:
    try:
        key = ECC.import_key(Path(path).read_text())
    except (OSError, ValueError, IndexError, TypeError) as exc:
        raise CryptoError(f"cannot load Ed25519 key from '{Path(path).name}'") from exc
    if key.curve != "Ed25519" or key.has_private() != private:
        kind = "private" if private else "public"
        raise CryptoError(f"'{Path(path).name}' is not an Ed25519 {kind} key")
    return key


def load_private_key(path: Path) -> EccKey:
    return _load(path, private=True)


def load_public_key(path: Path) -> EccKey:
    return _load(path, private=False)


def raw_public(key: EccKey) -> bytes:
    return bytes(key.public_key().export_key(format="raw"))


def key_id(name: str, alg: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


def _check_name(name: str) -> str:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise CryptoError("key name must be non-empty, without spaces or '+'")
    return name


# -- notes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(f"{line}\n" for line in lines)


@dataclass(frozen=True)
class SignatureLine:
    name: str
    key_id: bytes
    signature: bytes  # for cosignatures: u64 timestamp || Ed25519 signature

    def text(self) -> str:
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}"


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    signatures: tuple[SignatureLine, ...] = field(default=())

    def text(self) -> str:
        return self.checkpoint.body() + "\n" + "".join(s.text() + "\n" for s in self.signatures)


def parse_checkpoint_body(body: str) -> Checkpoint:
    if not body.endswith("\n"):
        raise IntegrityError("checkpoint body must end with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3 or not lines[0] or any(not line for line in lines[3:]):
        raise IntegrityError("checkpoint must have origin, size and root lines")
    origin, size_s, root_s = lines[:3]
    if not size_s.isascii() or not size_s.isdigit() or (len(size_s) > 1 and size_s[0] == "0") or len(size_s) > 20:
        raise IntegrityError("checkpoint size is not a canonical decimal")
    try:
        root = base64.b64decode(root_s, validate=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII character
        raise IntegrityError("checkpoint root is not base64") from exc
    if len(root) != HASH_SIZE or base64.b64encode(root).decode() != root_s:
        raise IntegrityError("checkpoint root is not a canonical 32-byte hash")
    return Checkpoint(origin, int(size_s), root, tuple(lines[3:]))


def parse_signed_note(text: str) -> SignedCheckpoint:
    """Parse a signed checkpoint note; does not verify signatures."""
    if len(text.encode()) > MAX_NOTE_BYTES or "\r" in text:
        raise IntegrityError("note is too large or contains carriage returns")
    split = text.rfind("\n\n")
    if split < 0 or not text.endswith("\n"):
        raise IntegrityError("note has no signature block")
    body, sig_block = text[: split + 1], text[split + 2 :]
    sigs: list[SignatureLine] = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise IntegrityError("malformed signature line")
        name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError as exc:  # binascii.Error, or a non-ASCII character
            raise IntegrityError("signature is not base64") from exc
        if not name or len(raw) < 5 or " " in b64:
            raise IntegrityError("malformed signature line")
        if base64.b64encode(raw).decode() != b64:  # unused low bits set: one signature, several texts
            raise IntegrityError("signature is not canonical base64")
        sigs.append(SignatureLine(name, raw[:4], raw[4:]))
    if not sigs:
        raise IntegrityError("note carries no signatures")
    return SignedCheckpoint(parse_checkpoint_body(body), tuple(sigs))


# -- signing and verification ----------------------------------------------------------------


class Signer:
    """The log's signing key (signed-note Ed25519)."""

    def __init__(self, name: str, key: EccKey) -> None:
        if not key.has_private() or key.curve != "Ed25519":
            raise CryptoError("signer needs an Ed25519 private key")
        self.name = _check_name(name)
        self._key = key
        self.key_id = key_id(name, ALG_ED25519, raw_public(key))

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self._key.public_key())

    def sign(self, checkpoint: Checkpoint) -> SignedCheckpoint:
        sig = eddsa.new(self._key, "rfc8032").sign(checkpoint.body().encode())
        return SignedCheckpoint(checkpoint, (SignatureLine(self.name, self.key_id, sig),))


class NoteVerifier:
    """Verifies the log's signature on a checkpoint note."""

    def __init__(self, name: str, public: EccKey) -> None:
        if public.curve != "Ed25519":
            raise CryptoError("verifier needs an Ed25519 public key")
        self.name = _check_name(name)
        self._pub = public.public_key()
        self.key_id = key_id(name, ALG_ED25519, raw_public(public))

    def verify(self, note: str | SignedCheckpoint) -> SignedCheckpoint:
        """Raise IntegrityError unless the note carries a valid signature by this key."""
        signed = parse_signed_note(note) if isinstance(note, str) else note
        body = signed.checkpoint.body().encode()
        for sig in signed.signatures:
            if sig.name == self.name and sig.key_id == self.key_id:
                try:
                    eddsa.new(self._pub, "rfc8032").verify(body, sig.signature)
                except ValueError as exc:
                    raise IntegrityError("checkpoint signature does not verify", signer=self.name) from exc
                return signed
        raise IntegrityError("checkpoint is not signed by the expected log key", signer=self.name)


def _cosigned_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


class Cosigner:
    """A witness's cosigning key (tlog-cosignature/v1)."""

    def __init__(self, name: str, key: EccKey) -> None:
        if not key.has_private() or key.curve != "Ed25519":
            raise CryptoError("cosigner needs an Ed25519 private key")
        self.name = _check_name(name)
        self._key = key
        self.key_id = key_id(name, ALG_COSIGNATURE_V1, raw_public(key))

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self._key.public_key())

    def cosign(self, checkpoint: Checkpoint, timestamp: int) -> SignatureLine:
        if not 0 <= timestamp < 1 << 63:
            raise CryptoError("cosignature timestamp out of range")
        sig = eddsa.new(self._key, "rfc8032").sign(_cosigned_message(checkpoint.body(), timestamp))
        return SignatureLine(self.name, self.key_id, struct.pack(">Q", timestamp) + sig)


class CosignatureVerifier:
    def __init__(self, name: str, public: EccKey) -> None:
        self.name = _check_name(name)
        self._pub = public.public_key()
        self.key_id = key_id(name, ALG_COSIGNATURE_V1, raw_public(public))

    def verify(self, note: str | SignedCheckpoint) -> int:
        """Raise IntegrityError unless this witness cosigned the note; return the cosignature time."""
        signed = parse_signed_note(note) if isinstance(note, str) else note
        for sig in signed.signatures:
            if sig.name == self.name and sig.key_id == self.key_id:
                if len(sig.signature) != 8 + 64:
                    raise IntegrityError("malformed cosignature", witness=self.name)
                (ts,) = struct.unpack(">Q", sig.signature[:8])
                try:
                    eddsa.new(self._pub, "rfc8032").verify(
                        _cosigned_message(signed.checkpoint.body(), ts), sig.signature[8:]
                    )
                except ValueError as exc:
                    raise IntegrityError("cosignature does not verify", witness=self.name) from exc
                return int(ts)
        raise IntegrityError("checkpoint is not cosigned by the expected witness", witness=self.name)


def add_cosignature(note: str | SignedCheckpoint, line: str | SignatureLine) -> SignedCheckpoint:
    """Append a signature line (replacing an older one from the same key)."""
    signed = parse_signed_note(note) if isinstance(note, str) else note
    if isinstance(line, str):
        parsed = parse_signed_note(signed.checkpoint.body() + "\n" + line.rstrip("\n") + "\n").signatures
        if len(parsed) != 1:
            raise IntegrityError("expected exactly one signature line")
        line = parsed[0]
    kept = tuple(s for s in signed.signatures if (s.name, s.key_id) != (line.name, line.key_id))
    return replace(signed, signatures=(*kept, line))
