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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from audit.merkle import HASH_SIZE
from xgate.errors import CryptoError, IntegrityError, InvalidInput

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
    if not Path(prefix).name or Path(prefix).is_dir():  # `--out .` wrote "..key.pem"
        raise InvalidInput(f"{prefix}: a path prefix is needed (e.g. keys/audit), not a directory")
    priv, pub = Path(f"{prefix}.key.pem"), Path(f"{prefix}.pub.pem")
    if pub.exists() or pub.is_symlink():  # the public half others verify with is never replaced alone
        raise FileExistsError(17, "File exists", str(pub))
    priv.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.export_key(format="PEM"))
    fd = os.open(pub, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.public_key().export_key(format="PEM"))
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


def vkey(name: str, alg: int, public: bytes) -> str:
    """A verifier key in Go's note format (C2SP signed-note): ``<name>+<hex key id>+<base64(alg || pubkey)>``.

    ``alg`` 0x01 for the log's Ed25519 signatures (what ``note.NewVerifier`` takes), 0x04 for a
    witness's tlog-cosignature/v1 key.
    """
    _check_name(name)
    if len(public) != 32:
        raise CryptoError("an Ed25519 public key has 32 bytes")
    encoded = base64.b64encode(bytes([alg]) + public).decode()
    return f"{name}+{key_id(name, alg, public).hex()}+{encoded}"


def parse_vkey(text: str) -> tuple[str, int, bytes]:
    """(name, algorithm, public key) from a verifier key; refuses a key id that does not match."""
    name, sep1, rest = text.strip().partition("+")
    hex_id, sep2, b64 = rest.partition("+")
    try:
        raw = base64.b64decode(b64, validate=True)
        kid = bytes.fromhex(hex_id)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise CryptoError("verifier key is not <name>+<key id>+<base64 key>") from exc
    if not (sep1 and sep2) or len(hex_id) != 8 or len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise CryptoError("verifier key is not <name>+<key id>+<base64 Ed25519 key>")
    _check_name(name)
    if key_id(name, raw[0], raw[1:]) != kid:
        raise CryptoError("verifier key id does not match its name and key")
    return name, raw[0], raw[1:]


def public_from_raw(public: bytes) -> EccKey:
    try:
        return eddsa.import_public_key(public)
    except (ValueError, IndexError, TypeError) as exc:
        raise CryptoError("not an Ed25519 public key") from exc


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


def split_note(text: str) -> tuple[str, tuple[SignatureLine, ...]]:
    """A signed note's text (with its final newline) and its signature lines; verifies nothing."""
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
    return body, tuple(sigs)


def parse_signed_note(text: str) -> SignedCheckpoint:
    """Parse a signed checkpoint note; does not verify signatures."""
    body, sigs = split_note(text)
    return SignedCheckpoint(parse_checkpoint_body(body), sigs)


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
        self.public_raw = raw_public(public)
        self.key_id = key_id(name, ALG_COSIGNATURE_V1, self.public_raw)

    def verify(self, note: str | SignedCheckpoint) -> int:
        """Raise IntegrityError unless this witness cosigned the note; return the cosignature time."""
        ts = self.cosigned_at(note)
        if ts is None:
            raise IntegrityError("checkpoint is not cosigned by the expected witness", witness=self.name)
        return ts

    def cosigned_at(self, note: str | SignedCheckpoint) -> int | None:
        """The time of this witness's cosignature on the note, None if it carries none;
        IntegrityError if it carries one that does not verify."""
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
        return None


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


@dataclass(frozen=True)
class OpenedNote:
    text: str  # the note text (what the signatures cover)
    verified_by: tuple[str, ...]  # names of the known keys whose signatures verified
    unknown: tuple[str, ...]  # names on signature lines from keys not given


def open_note(note: str, vkeys: Sequence[str]) -> OpenedNote:
    """Go's ``note.Open`` semantics (any note, not only checkpoints) over verifier keys of type
    0x01 (Ed25519) and 0x04 (cosignature/v1).

    Lines whose (name, key id) match a given key must verify (else the whole note is refused);
    lines from other keys are ignored; at least one known signature must verify. Cosignatures are
    checked as C2SP tlog-cosignature: over ``cosignature/v1\\ntime <t>\\n`` and the note text.
    """
    body, signatures = split_note(note)
    known: dict[tuple[str, bytes], tuple[int, EccKey]] = {}
    for text in vkeys:
        name, alg, public = parse_vkey(text)
        known[(name, key_id(name, alg, public))] = (alg, public_from_raw(public))
    verified: list[str] = []
    unknown: list[str] = []
    for sig in signatures:
        entry = known.get((sig.name, sig.key_id))
        if entry is None:
            unknown.append(sig.name)
            continue
        alg, pub = entry
        message, raw = body.encode(), sig.signature
        if alg == ALG_COSIGNATURE_V1:
            if len(raw) != 8 + 64:
                raise IntegrityError("malformed cosignature", signer=sig.name)
            (ts,) = struct.unpack(">Q", raw[:8])
            if ts >= 1 << 63:
                raise IntegrityError("cosignature timestamp out of range", signer=sig.name)
            message, raw = _cosigned_message(body, ts), raw[8:]
        try:
            eddsa.new(pub, "rfc8032").verify(message, raw)
        except ValueError as exc:
            raise IntegrityError("a signature from a known key does not verify", signer=sig.name) from exc
        verified.append(sig.name)
    if not verified:
        raise IntegrityError("no signature from a known key on the note")
    return OpenedNote(body, tuple(verified), tuple(unknown))
