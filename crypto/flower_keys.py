"""Flower transport material: the SuperLink's TLS certificate and the SuperNodes' authentication keys.

Flower 1.41 serves its Fleet, Control and Runtime APIs over one HTTPS port (`flower-superlink
--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`); SuperNodes and the `flwr` CLI verify it against
a root certificate (`--root-certificates`, CLI config key `root-certificates`). With
`--enable-supernode-auth` the SuperLink only activates SuperNodes whose public key was registered
beforehand through its Control API (`flwr supernode register <pub>`); a SuperNode proves it holds
the key by signing a timestamp with it on every Fleet call (`--auth-supernode-private-key`).

Formats Flower requires: the private key in OpenSSH format (`load_ssh_private_key`), the public key
as an OpenSSH line (`ecdsa-sha2-nistp256 ...`), a NIST EC curve. We use P-256 keys issued by the
federation CA as `flower-supernode` certificates: the certificate binds the key to an agency, so the
coordinator registers only keys the CA vouches for (checked against the CRL) and never trusts a
bare public key it was handed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crypto import pki
from crypto.peers import PeerIdentity, load_cert, verify_peer_certificate
from xgate.errors import CryptoError


@dataclass(frozen=True)
class SuperNodeKey:
    """One SuperNode's authentication key; `certificate` (CA-issued) binds it to `agency`."""

    agency: str
    private_key: Path  # OpenSSH EC private key, mode 0600
    public_key: Path  # OpenSSH public key line, what `flwr supernode register` reads
    certificate: Path | None = None


@dataclass(frozen=True)
class FlowerSecurity:
    """TLS for every SuperLink API plus SuperNode authentication for one Flower deployment."""

    ca_cert: Path
    superlink_cert: Path
    superlink_key: Path
    supernode_keys: Mapping[str, SuperNodeKey] = field(default_factory=dict)
    crl: Path | None = None  # checked before use; None skips revocation (ephemeral job CA)


def openssh_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def openssh_public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """An OpenSSH EC public key as Flower reads it; raise CryptoError otherwise."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm):
        raise CryptoError("not an OpenSSH public key file") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CryptoError("SuperNode keys must be EC keys")
    return key  # OpenSSH encodes only P-256/384/521: the weak curves Flower also allows cannot occur


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An OpenSSH EC private key as `flower-supernode --auth-supernode-private-key` reads it."""
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, UnsupportedAlgorithm):
        raise CryptoError("not an unencrypted OpenSSH private key file") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError("SuperNode keys must be EC keys")
    return key


def _save_pair(key: ec.EllipticCurvePrivateKey, out_dir: Path, agency: str) -> tuple[Path, Path]:
    priv, pub = out_dir / f"supernode-{agency}.ssh.key", out_dir / f"supernode-{agency}.ssh.pub"
    pki.write_private(priv, openssh_private(key))
    pub.write_bytes(openssh_public(key.public_key()))
    return priv, pub


def generate_supernode_key(out_dir: Path, agency: str) -> SuperNodeKey:
    """A fresh P-256 key pair without a certificate (tests; agencies generating their own key)."""
    if not pki.AGENCY_ID.fullmatch(agency):
        raise CryptoError("agency id must match ^[a-z][a-z0-9_]{1,31}$")
    priv, pub = _save_pair(ec.generate_private_key(ec.SECP256R1()), out_dir, agency)
    return SuperNodeKey(agency, priv, pub)


def certify_supernode_key(ca_dir: Path, agency: str, out_dir: Path, days: int = 1) -> SuperNodeKey:
    """Issue a `flower-supernode` certificate and keep its key only in Flower's OpenSSH format."""
    issued = pki.issue(ca_dir, "flower-supernode", agency, out_dir, days=days, loopback=False)
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError("issued SuperNode key is not an EC key")
    priv, pub = _save_pair(key, out_dir, agency)
    issued.key_path.unlink()  # one copy of the secret, in the format its only user reads
    return SuperNodeKey(agency, priv, pub, issued.cert_path)


def verify_supernode_key(
    key: SuperNodeKey, ca_cert: Path, crl: Path | None = None, now: dt.datetime | None = None
) -> None:
    """The key's certificate is a valid, unrevoked `flower-supernode` certificate of `key.agency`
    from this CA and certifies exactly this public key; raise CryptoError naming what failed."""
    if key.certificate is None:
        raise CryptoError(f"SuperNode key of agency '{key.agency}' has no certificate")
    cert = load_cert(key.certificate)
    verify_peer_certificate(cert, ca_cert, crl, key.agency, "flower-supernode", now=now)
    public = load_public_key(key.public_key)
    if cert.public_key() != public:
        raise CryptoError(f"SuperNode public key of agency '{key.agency}' does not match its certificate")


def verify_superlink_cert(
    cert_path: Path, ca_cert: Path, crl: Path | None = None, now: dt.datetime | None = None
) -> PeerIdentity:
    return verify_peer_certificate(load_cert(cert_path), ca_cert, crl, None, "flower-superlink", now=now)


def host_sans(hosts: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split host names and IP addresses (bind-all addresses are not names a client dials)."""
    dns: list[str] = []
    ips: list[str] = []
    for h in filter(None, hosts):
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            dns.append(h)
            continue
        if not ip.is_unspecified:
            ips.append(str(ip))
    return dns, ips


def prepare_flower_security(
    out_dir: Path,
    agencies: Iterable[str],
    *,
    ca_dir: Path | None = None,
    hosts: Iterable[str] = ("127.0.0.1",),
    coordinator: str = "gateway",
    days: int = 1,
    loopback: bool = True,
) -> FlowerSecurity:
    """Short-lived Flower material for one job under out_dir (keys 0600).

    With ca_dir (the federation CA, e.g. the dev federation's pki/ca) certificates are issued and
    recorded there and its CRL is checked. Without, an ephemeral job CA is created in out_dir/ca and
    its private key deleted once the job's certificates exist, or issuing them failed: nothing else
    can ever be issued by it. out_dir must not hold an earlier job CA (the runner clears it).
    """
    ephemeral = ca_dir is None
    if ca_dir is None:
        ca_dir = out_dir / "ca"
        pki.init_ca(ca_dir, "xgate ephemeral Flower job CA", days=days + 1)
    try:
        dns, ips = host_sans(hosts)
        link = pki.issue(
            ca_dir,
            "flower-superlink",
            coordinator,
            out_dir / "superlink",
            dns=dns,
            ips=ips,
            days=days,
            loopback=loopback,
        )
        keys = {a: certify_supernode_key(ca_dir, a, out_dir / "nodes" / a, days=days) for a in agencies}
        ca_cert = out_dir / "ca.cert.pem"
        ca_cert.write_bytes((ca_dir / pki.CA_CERT).read_bytes())
    finally:
        if ephemeral:  # also when issuing failed: a job CA's key never outlives its one issuance
            (ca_dir / pki.CA_KEY).unlink(missing_ok=True)
    return FlowerSecurity(ca_cert, link.cert_path, link.key_path, keys, ca_dir / pki.CRL)


def verify_flower_security(security: FlowerSecurity, now: dt.datetime | None = None) -> None:
    """Fail closed before any process starts: every certificate is ours, valid, unrevoked, bound."""
    verify_superlink_cert(security.superlink_cert, security.ca_cert, security.crl, now=now)
    for agency, key in security.supernode_keys.items():
        if key.agency != agency:
            raise CryptoError(f"SuperNode key listed for '{agency}' belongs to '{key.agency}'")
        verify_supernode_key(key, security.ca_cert, security.crl, now=now)
