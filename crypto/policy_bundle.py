"""Signed policy bundles: the federation operator publishes the policy set, every party installs it.

A bundle (`xgate-policy-bundle/1`, one JSON file) carries a version, the time of issue, every file of
the policy set (relative path, SHA-256, content) and an ECDSA P-256/SHA-256 signature by the
federation CA's key over the canonical JSON of all of that. `install` verifies the signature against
the CA certificate, refuses a version not newer than the one installed, writes the files and keeps
the signed manifest (files' digests, no contents) as `.bundle.json` in the policy directory.
`verify_installed` checks that manifest again and that every file still has its signed digest, so a
service configured with `signed_policies = true` starts only on an unaltered, CA-signed policy set
(`xgate config check`). Parties re-read their policy directory when it changes (policies/reload.py),
verifying it again with `verify_installed` and taking only a newer version, so installing a newer
bundle takes effect without a restart and anything else written there is refused.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from crypto.peers import load_cert
from xgate.errors import ConfigError, CryptoError

FORMAT = "xgate-policy-bundle/1"
MANIFEST = ".bundle.json"
_SUFFIXES = (".toml", ".cedar", ".cedarschema", ".json")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _files(policy_dir: Path) -> dict[str, bytes]:
    found = {
        str(p.relative_to(policy_dir)): p.read_bytes()
        for p in sorted(policy_dir.rglob("*"))
        if p.is_file() and p.suffix in _SUFFIXES and p.name != MANIFEST and "__pycache__" not in p.parts
    }
    if not found:
        raise ConfigError(f"{policy_dir} holds no policy files")
    return found


def publish(ca_key: ec.EllipticCurvePrivateKey, policy_dir: Path, version: int, out: Path) -> dict[str, Any]:
    """Sign the policy set in `policy_dir` as bundle `version` (a positive integer) into `out`."""
    if version < 1:
        raise ConfigError("bundle version must be a positive integer")
    files = _files(policy_dir)
    body = {
        "format": FORMAT,
        "version": version,
        "issued_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    signature = ca_key.sign(_canonical(body), ec.ECDSA(hashes.SHA256()))
    doc = body | {
        "signature": base64.b64encode(signature).decode(),
        "contents": {name: base64.b64encode(data).decode() for name, data in files.items()},
    }
    out.write_text(json.dumps(doc, indent=1))
    return body


@dataclass(frozen=True)
class Installed:
    version: int
    issued_at: str
    files: int
    digests: tuple[tuple[str, str], ...] = ()  # (relative path, SHA-256) of every signed file

    def digest(self, name: str) -> str | None:
        """The signed SHA-256 of the policy file `name` (relative path), None when the bundle has none."""
        return dict(self.digests).get(name)


def _verified(doc: dict[str, Any], ca_cert: Path) -> dict[str, Any]:
    try:
        body = {k: doc[k] for k in ("format", "version", "issued_at", "files")}
        signature = base64.b64decode(doc["signature"])
    except (KeyError, TypeError, ValueError):
        raise CryptoError("not a signed policy bundle (no signature or missing fields)") from None
    if body["format"] != FORMAT:
        raise CryptoError(f"unknown policy bundle format {str(body['format'])[:40]!r}")
    public = load_cert(ca_cert).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CryptoError("CA key type not supported")
    try:
        public.verify(signature, _canonical(body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError("policy bundle signature does not verify against the federation CA") from None
    return body


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} {path}: not a JSON object")
    return doc


def install(bundle: Path, ca_cert: Path, policy_dir: Path) -> Installed:
    """Verify and install a bundle; refuse an unsigned, tampered or not newer one (nothing written)."""
    doc = _read_json(bundle, "policy bundle")
    body = _verified(doc, ca_cert)
    contents = doc.get("contents")
    if not isinstance(contents, dict) or set(contents) != set(body["files"]):
        raise CryptoError("policy bundle contents do not match its signed file list")
    decoded = {name: base64.b64decode(data) for name, data in contents.items()}
    for name, data in decoded.items():
        if hashlib.sha256(data).hexdigest() != body["files"][name]:
            raise CryptoError(f"policy bundle file {name} does not match its signed digest")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CryptoError(f"policy bundle file name {name!r} leaves the policy directory")
    current = policy_dir / MANIFEST
    if current.exists():
        installed = _read_json(current, "installed policy bundle manifest")
        if int(body["version"]) <= int(installed.get("version", 0)):
            raise ConfigError(
                f"policy bundle version {body['version']} is not newer than the installed version "
                f"{installed.get('version')}: refusing a rollback"
            )
    # The new directory holds the bundle's files alone: a file only the old bundle had is gone.
    manifest = body | {"signature": doc["signature"]}
    _swap_in(policy_dir, {**decoded, MANIFEST: json.dumps(manifest, indent=1).encode()})
    return Installed(int(body["version"]), str(body["issued_at"]), len(decoded))


def _swap_in(policy_dir: Path, files: dict[str, bytes]) -> None:
    """Write the whole new policy directory beside the old one, then swap the two by renames, so
    a failure while writing (a full disk, a path that is a directory) leaves the installed policies
    as they were, never half of each version."""
    policy_dir = policy_dir.absolute()
    policy_dir.parent.mkdir(parents=True, exist_ok=True)
    if policy_dir.exists() and not policy_dir.is_dir():
        raise ConfigError(f"{policy_dir}: not a directory, so not a policy directory")
    staging = Path(tempfile.mkdtemp(prefix=f".{policy_dir.name}.installing-", dir=policy_dir.parent))
    try:
        for name, data in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        staging.chmod(0o755)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"policy bundle not installed, nothing changed: {exc}") from None
    previous = policy_dir.with_name(f".{policy_dir.name}.previous-{staging.name.rsplit('-', 1)[-1]}")
    if policy_dir.exists():
        os.rename(policy_dir, previous)
    try:
        os.rename(staging, policy_dir)
    except OSError as exc:
        if previous.exists():
            os.rename(previous, policy_dir)
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"policy bundle not installed, nothing changed: {exc}") from None
    shutil.rmtree(previous, ignore_errors=True)


def verify_installed(policy_dir: Path, ca_cert: Path) -> Installed:
    """The installed manifest is CA-signed and every policy file has its signed digest (and no file
    was added); raise naming the first difference."""
    manifest = policy_dir / MANIFEST
    if not manifest.exists():
        raise CryptoError(f"{policy_dir} holds no signed policy bundle (install one with `xgate policy install`)")
    body = _verified(_read_json(manifest, "installed policy bundle manifest"), ca_cert)
    present = {name: hashlib.sha256(data).hexdigest() for name, data in _files(policy_dir).items()}
    for name, digest in body["files"].items():
        if present.get(name) != digest:
            raise CryptoError(f"policy file {name} differs from bundle version {body['version']}")
    extra = sorted(set(present) - set(body["files"]))
    if extra:
        raise CryptoError(f"policy files not in bundle version {body['version']}: {', '.join(extra[:5])}")
    return Installed(
        int(body["version"]), str(body["issued_at"]), len(body["files"]), tuple(sorted(body["files"].items()))
    )
