"""Pre-flight checks of the files a service config names: one line per problem, nothing raised.

`xgate config check` prints these lines; `xgate node serve` and `xgate gateway serve` refuse to
start while there is any (nodes/preflight.py, gateway/preflight.py collect them per config).
Checks: a file exists (and is a regular file or a directory as expected); a secret is readable by
its owner only (no group/other bits), and so is a file holding personal data (a node store, a
ledger, an audit database, state, a holdout; with SQLite's journals beside it); a certificate
chains to the CA, is valid now, is not revoked, names the expected agency and kind, and matches its
private key; the CRL is signed by the CA and fresh; the federation directory verifies; a host:port
resolves.
"""

from __future__ import annotations

import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from crypto.peers import check_crl, load_cert, load_crl, utcnow, verify_peer_certificate
from xgate.errors import ConfigError, CryptoError, XgateError


@dataclass
class Problems:
    """Problems found in one config file, each a self-contained line naming the key and the file."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self, what: str) -> None:
        if self.lines:
            raise ConfigError(
                f"{what} refused by `xgate config check` ({len(self.lines)} problem(s)):\n  " + "\n  ".join(self.lines)
            )


def file_ok(problems: Problems, key: str, path: Path | None, *, secret: bool = False, is_dir: bool = False) -> bool:
    """Exists, right type, and (secret) no group/other permission bits. True when usable."""
    if path is None:
        return False
    try:
        st = path.stat()
    except OSError as exc:
        problems.add(f"{key} = {path}: {exc.strerror or 'cannot stat'}")
        return False
    if is_dir != stat.S_ISDIR(st.st_mode):
        problems.add(f"{key} = {path}: expected a {'directory' if is_dir else 'file'}")
        return False
    if secret and st.st_mode & 0o077:
        problems.add(
            f"{key} = {path}: a secret readable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
        )
        return False
    return True


def loads_ok(problems: Problems, key: str, path: Path, load: Callable[[Path], object]) -> bool:
    """A file that is there is also what it should be: `load` (the loader serve uses) accepts it."""
    try:
        load(path)
    except XgateError as exc:
        problems.add(f"{key} = {path}: {exc.message}")
        return False
    return True


SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_file_ok(problems: Problems, key: str, path: Path | None) -> bool:
    """A file holding personal data, when it exists, and SQLite's journals beside it: no group/other
    permission bits (refused as a readable secret is). True when none has any."""
    if path is None:
        return True
    ok = True
    for candidate in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)):
        try:
            st = candidate.stat()
        except OSError:
            continue  # absent (not created yet), or reported by file_ok
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            problems.add(
                f"{key} = {candidate}: holds personal data but group/others may read it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 {candidate}"
            )
            ok = False
    return ok


def address_ok(problems: Problems, key: str, address: str) -> bool:
    """host:port resolves (getaddrinfo); a bind-all or wildcard host is fine."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        problems.add(f"{key} = {address}: not host:port")
        return False
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        problems.add(f"{key} = {address}: host '{host}' does not resolve ({exc})")
        return False
    return True


def private_key_public(path: Path) -> object | None:
    """The public half of a PEM (PKCS#8) or OpenSSH private key file; None if it is neither."""
    data = path.read_bytes()
    try:
        return serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        pass
    try:  # a SuperNode key is in OpenSSH format (what Flower reads)
        return serialization.load_ssh_private_key(data, password=None).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def certificate_ok(
    problems: Problems,
    prefix: str,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    crl: Path | None,
    agency: str | None,
    kind: str,
) -> bool:
    """The certificate chains to the CA, is valid, unrevoked, of this agency/kind, and matches its key."""
    ok = file_ok(problems, f"{prefix}.ca", ca)
    ok = file_ok(problems, f"{prefix}.cert", cert) and ok
    if key is not None:
        ok = file_ok(problems, f"{prefix}.key", key, secret=True) and ok
    crl_ok = crl is None or file_ok(problems, f"{prefix}.crl", crl)
    if not ok or cert is None or ca is None:
        return False
    try:
        ca_cert = load_cert(ca)
        if crl is not None and crl_ok:
            check_crl(load_crl(crl), ca_cert, utcnow())
        verify_peer_certificate(load_cert(cert), ca_cert, crl if crl_ok else None, agency, kind)
    except XgateError as exc:
        problems.add(f"{prefix}.cert = {cert}: {exc.message}")
        return False
    if key is not None and private_key_public(key) != load_cert(cert).public_key():
        problems.add(f"{prefix}.key = {key}: does not match the certificate {cert.name}")
        return False
    return crl_ok


def directory_ok(problems: Problems, key: str, path: Path | None, ca: Path | None) -> bool:
    from crypto.pki import load_directory

    if not file_ok(problems, key, path) or path is None or ca is None:
        return False
    try:
        load_directory(path, ca)
    except (ConfigError, CryptoError) as exc:
        problems.add(f"{key} = {path}: {exc.message}")
        return False
    return True


def signing_key_ok(problems: Problems, key: str, path: Path | None, directory: Path | None, ca: Path | None,
                   agency: str, kind: str) -> bool:  # fmt: skip
    """The Ed25519 signing key loads and the federation directory lists it for this agency/kind."""
    from crypto.envelope import SigningKey
    from crypto.pki import load_directory

    if not file_ok(problems, key, path, secret=True) or path is None:
        return False
    try:
        signer = SigningKey.load(path)
    except XgateError as exc:
        problems.add(f"{key} = {path}: {exc.message}")
        return False
    if directory is None or ca is None or not directory.exists():
        return True
    try:
        entry = load_directory(directory, ca).keyring().get(signer.key_id)
    except XgateError:
        return True  # reported by directory_ok
    if entry is None or entry.revoked or entry.agency != agency or entry.kind != kind:
        problems.add(
            f"{key} = {path}: key id {signer.key_id} is not a valid key of {kind} '{agency}' in the federation "
            "directory (install the renewed key, or distribute the CA's newest federation.json)"
        )
        return False
    return True


def policy_bundle_ok(problems: Problems, key: str, policy_dir: Path | None, ca: Path | None) -> bool:
    """`signed_policies = true`: the policy directory holds an unaltered, CA-signed bundle."""
    from crypto.policy_bundle import verify_installed

    if policy_dir is None or ca is None:
        problems.add(f"{key}: signed_policies needs a policy_dir and the CA certificate ([tls].ca)")
        return False
    try:
        verify_installed(policy_dir, ca)
    except XgateError as exc:
        problems.add(f"{key} = {policy_dir}: {exc.message}")
        return False
    return True
