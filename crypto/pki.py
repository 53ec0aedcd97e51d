"""Federation PKI: one CA, short-lived organisation certificates, a CRL and a signed directory.

Keys are ECDSA P-256 for the CA and TLS certificates (gRPC's BoringSSL and Python's ssl both
accept it; Ed25519 TLS certificates are not reliably supported by every gRPC client stack).
Message signing uses a separate Ed25519 key per party (crypto/envelope.py); its public key is
bound to the organisation by the **federation directory** (`federation.json`) that lists, per
(agency, kind): address, TLS certificate fingerprint and serial, Ed25519 public key and key id,
and is signed by the CA key. A directory rather than a certificate extension, because the
verifier of an envelope (e.g. a gRPC client) often never sees the peer's certificate, and
because rotating a signing key must not require re-issuing the TLS certificate.

CA directory layout: ca.key.pem (0600), ca.cert.pem, index.json (issued serials), crl.pem,
federation.json. Certificates carry: subject O=<agency>, OU=<kind>, CN=<kind>.<agency>;
SAN URIs urn:xgate:agency:<id> and urn:xgate:role:<kind>; SAN DNS <agency>.<kind>.xgate (the
name clients pin with ssl_target_name_override) plus localhost/127.0.0.1 and extras.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.envelope import KeyEntry, Keyring, SigningKey, key_id_for

# Certificate loading and peer verification live in crypto/peers.py; re-exported here so that
# `pki.<name>` keeps working for callers.
from crypto.peers import (
    AGENCY_URI,
    DEFAULT_CRL_GRACE,
    ROLE_URI,
    PeerIdentity,
    check_crl,
    fingerprint,
    load_cert,
    load_crl,
    peer_identity,
    utcnow,
    verify_peer_certificate,
)
from xgate.addresses import host_port
from xgate.errors import ConfigError, CryptoError, InvalidInput, NotFound

__all__ = [
    "AGENCY_URI",
    "CA",
    "CA_CERT",
    "CA_KEY",
    "CRL",
    "DEFAULT_CRL_GRACE",
    "DIRECTORY",
    "INDEX",
    "KINDS",
    "ROLE_URI",
    "SIGNING_KINDS",
    "DirectoryEntry",
    "FederationDirectory",
    "Issued",
    "Kind",
    "PeerIdentity",
    "check_crl",
    "dns_label",
    "fingerprint",
    "init_ca",
    "issue",
    "load_ca",
    "load_cert",
    "load_crl",
    "load_directory",
    "peer_identity",
    "revoke",
    "set_address",
    "target_name",
    "utcnow",
    "verify_peer_certificate",
    "write_crl",
    "write_private",
]

Kind = Literal["gateway", "node", "flower-superlink", "flower-supernode", "user"]
KINDS: tuple[str, ...] = get_args(Kind)
SIGNING_KINDS = frozenset({"gateway", "node"})
AGENCY_ID = re.compile(r"^[a-z][a-z0-9_]{1,31}$")  # agency ids name files, certificates and TOML tables
CA_KEY, CA_CERT, CRL, INDEX, DIRECTORY = "ca.key.pem", "ca.cert.pem", "crl.pem", "index.json", "federation.json"


def dns_label(agency: str) -> str:
    """Agency ids may contain '_', DNS names may not; ids never contain '-', so this is injective."""
    return agency.replace("_", "-")


def target_name(agency: str, kind: str = "node") -> str:
    """The DNS SAN a client pins (ssl_target_name_override) to reach exactly this agency's party."""
    return f"{dns_label(agency)}.{kind}.xgate"


def _check_ids(agency: str, kind: str) -> None:
    if not AGENCY_ID.fullmatch(agency):
        raise InvalidInput("agency id must match ^[a-z][a-z0-9_]{1,31}$", agency=agency[:40])
    if kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", kind=kind[:40])


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (mode 0600 from creation, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class CA:
    dir: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def name(self) -> str:
        return str(self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def init_ca(ca_dir: Path, name: str, days: int = 3650, now: dt.datetime | None = None) -> CA:
    """Create the federation CA (P-256, path length 0), an empty CRL and an empty directory."""
    if (ca_dir / CA_KEY).exists():
        raise ConfigError(f"a CA already exists in {ca_dir}")
    if not 1 <= days <= 36_500:
        raise InvalidInput("--days: a CA is valid for 1 to 36500 days")
    if not 1 <= len(name) <= 64:  # X.509's upper bound for a common name
        raise InvalidInput("--name: a CA's name is 1 to 64 characters")
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xgate federation"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    ca_dir.mkdir(parents=True, exist_ok=True)
    write_private(ca_dir / CA_KEY, _pem_key(key))
    (ca_dir / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (ca_dir / INDEX).write_text(json.dumps({"certificates": []}, indent=2))
    ca = CA(ca_dir, cert, key)
    write_crl(ca, now=now)
    _write_directory(ca, now)
    return ca


def load_ca(ca_dir: Path) -> CA:
    try:
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
        cert = load_cert(ca_dir / CA_CERT)
    except FileNotFoundError:
        raise ConfigError(f"no CA in {ca_dir}; run `xgate pki init` first") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("CA key must be ECDSA P-256")
    return CA(ca_dir, cert, key)


def _index(ca: CA) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], json.loads((ca.dir / INDEX).read_text())["certificates"])


def _save_index(ca: CA, entries: list[dict[str, Any]]) -> None:
    tmp = ca.dir / (INDEX + ".tmp")
    tmp.write_text(json.dumps({"certificates": entries}, indent=2))
    tmp.replace(ca.dir / INDEX)


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path
    signing_key_path: Path | None
    serial: int
    fingerprint: str
    key_id: str | None


def issue(
    ca_dir: Path,
    kind: str,
    agency: str,
    out_dir: Path,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    days: int = 30,
    address: str = "",
    signing_key: bool | None = None,
    now: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
    loopback: bool = True,
) -> Issued:
    """Issue a P-256 certificate (+ an Ed25519 signing key for gateway/node) and publish it.

    Writes <kind>-<agency>.cert.pem, .key.pem (0600) and .sign.pem into out_dir, records the
    serial in index.json and re-signs federation.json. `now`/`not_before` exist for tests.
    loopback=False leaves out the localhost/127.0.0.1 SANs (a certificate only for named hosts).
    The CA generates the private keys here: for parties on other hosts use `request` (the party)
    -> `sign_request` (the CA) -> `install` (the party), so that no private key travels.
    """
    _check_ids(agency, kind)
    _check_days(days)
    check_address(address)
    ca = load_ca(ca_dir)
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(ca, kind, agency, key.public_key(), dns, ips, days, not_before or now - dt.timedelta(minutes=5),
                        loopback)  # fmt: skip
    stem = f"{kind}-{agency}"
    cert_path, key_path = out_dir / f"{stem}.cert.pem", out_dir / f"{stem}.key.pem"
    write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    sign_path: Path | None = None
    signer: SigningKey | None = None
    wants_signer = (kind in SIGNING_KINDS) if signing_key is None else signing_key
    if wants_signer:
        signer = SigningKey.generate(agency, kind)
        sign_path = out_dir / f"{stem}.sign.pem"
        signer.save(sign_path)
    _record(ca, cert, agency, kind, address, signer.public_raw if signer else None, now)
    return Issued(
        cert_path, key_path, sign_path, cert.serial_number, fingerprint(cert), signer.key_id if signer else None
    )


def check_address(address: str) -> None:
    """An address the signed directory may publish: empty (keep the last one) or host:port."""
    if address:
        host_port("--address", address)


def _check_days(days: int) -> None:
    if not 1 <= days <= 825:
        raise InvalidInput("days must be between 1 and 825")


def _certificate(
    ca: CA,
    kind: str,
    agency: str,
    public_key: ec.EllipticCurvePublicKey,
    dns: Iterable[str],
    ips: Iterable[str],
    days: int,
    start: dt.datetime,
    loopback: bool,
) -> x509.Certificate:
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(AGENCY_URI + agency),
        x509.UniformResourceIdentifier(ROLE_URI + kind),
        x509.DNSName(target_name(agency, kind)),
    ]
    if loopback:
        sans += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    sans += [x509.DNSName(d) for d in dns if d and not (loopback and d == "localhost")]
    try:
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips if i and not (loopback and i == "127.0.0.1")]
    except ValueError:
        raise InvalidInput("not an IP address in --ip") from None
    usages = (
        [ExtendedKeyUsageOID.CLIENT_AUTH]
        if kind == "user"
        else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(kind, agency))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def _subject(kind: str, agency: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{kind}.{agency}"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, agency),
        ]
    )


def _record(ca: CA, cert: x509.Certificate, agency: str, kind: str, address: str, ed25519_public: bytes | None,
            now: dt.datetime) -> None:  # fmt: skip
    """Record an issued certificate in index.json and re-sign the directory."""
    entries = _index(ca)
    if not address:  # a renewal keeps the address the directory publishes
        address = next((e["address"] for e in reversed(entries) if e["agency"] == agency and e["kind"] == kind
                        and e["address"]), "")  # fmt: skip
    entries.append(
        {
            "serial": str(cert.serial_number),
            "agency": agency,
            "kind": kind,
            "fingerprint": fingerprint(cert),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "revoked_at": None,
            "address": address,
            "key_id": key_id_for(ed25519_public) if ed25519_public else None,
            "ed25519_public": base64.b64encode(ed25519_public).decode() if ed25519_public else None,
        }
    )
    _save_index(ca, entries)
    _write_directory(ca, now)


def revoke(ca_dir: Path, serial: int | str, now: dt.datetime | None = None, crl_days: int = 7) -> Path:
    """Mark a serial revoked, re-sign the CRL and the directory (its signing key is marked revoked)."""
    ca, now = load_ca(ca_dir), now or utcnow()
    entries = _index(ca)
    hits = [e for e in entries if e["serial"] == str(serial)]
    if not hits:
        raise NotFound("no certificate with this serial was issued by this CA", serial=str(serial))
    for e in hits:
        e["revoked_at"] = e["revoked_at"] or now.isoformat()
    _save_index(ca, entries)
    _write_directory(ca, now)
    return write_crl(ca, days=crl_days, now=now)


def set_address(ca_dir: Path, agency: str, kind: str, address: str) -> None:
    """Record where a party listens (host:port) in the signed directory."""
    check_address(address)
    ca = load_ca(ca_dir)
    entries = _index(ca)
    hits = [e for e in entries if e["agency"] == agency and e["kind"] == kind and not e["revoked_at"]]
    if not hits:
        raise NotFound(f"no valid certificate for {kind} of agency '{agency}'")
    hits[-1]["address"] = address
    _save_index(ca, entries)
    _write_directory(ca, utcnow())


def write_crl(ca: CA, days: int = 7, now: dt.datetime | None = None) -> Path:
    """(Re)sign crl.pem; relying parties accept it until next_update + their grace period."""
    if not 1 <= days <= 366:
        raise InvalidInput("--days: a CRL is valid for 1 to 366 days (re-issue it before then)")
    now = now or utcnow()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=days))
    )
    for e in _index(ca):
        if e["revoked_at"]:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(e["serial"]))
                .revocation_date(dt.datetime.fromisoformat(e["revoked_at"]))
                .build()
            )
    crl = builder.sign(ca.key, hashes.SHA256())
    path = ca.dir / CRL
    tmp = ca.dir / (CRL + ".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)
    return path


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _write_directory(ca: CA, now: dt.datetime) -> None:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    previous: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in _index(ca):  # newest certificate per (agency, kind) wins; revoked ones stay listed as revoked
        if e["key_id"] or e["kind"] in SIGNING_KINDS:
            key = (e["agency"], e["kind"])
            if key in latest:
                previous.setdefault(key, []).append(latest[key])
            latest[key] = e
    body = {
        "format": "xgate-federation/1",
        "federation": ca.name,
        "issued_at": now.isoformat(),
        "entries": [
            {
                k: e[k]
                for k in ("agency", "kind", "address", "serial", "fingerprint", "key_id", "ed25519_public", "not_after")
            }
            | {"revoked": bool(e["revoked_at"])}
            | _previous_keys(previous.get(key, []), now)
            for key, e in latest.items()
        ],
    }
    sig = ca.key.sign(_canonical_json(body), ec.ECDSA(hashes.SHA256()))
    tmp = ca.dir / (DIRECTORY + ".tmp")
    tmp.write_text(json.dumps(body | {"signature": base64.b64encode(sig).decode()}, indent=2))
    tmp.replace(ca.dir / DIRECTORY)


def _previous_keys(older: list[dict[str, Any]], now: dt.datetime) -> dict[str, Any]:
    """Signing keys of a party's earlier certificates that are neither revoked nor expired.

    They stay valid beside the renewed key until their certificate runs out, so a renewal takes
    effect without restarting anyone: the party switches keys when it installs the new one, and
    verifiers accept both meanwhile. Revoking the old serial ends this at once.
    """
    keys = [
        {"key_id": e["key_id"], "ed25519_public": e["ed25519_public"], "not_after": e["not_after"]}
        for e in older
        if e["key_id"] and not e["revoked_at"] and dt.datetime.fromisoformat(e["not_after"]) > now
    ]
    return {"previous_keys": keys} if keys else {}


@dataclass(frozen=True)
class DirectoryEntry:
    agency: str
    kind: str
    address: str
    serial: str
    fingerprint: str
    key_id: str | None
    ed25519_public: bytes | None
    revoked: bool
    previous_keys: tuple[tuple[str, bytes, str], ...] = ()  # (key id, Ed25519 public, not_after): renewal overlap


@dataclass(frozen=True)
class FederationDirectory:
    federation: str
    issued_at: str
    entries: tuple[DirectoryEntry, ...]

    def entry(self, agency: str, kind: str = "node") -> DirectoryEntry:
        for e in self.entries:
            if e.agency == agency and e.kind == kind:
                if e.revoked:
                    raise CryptoError(f"{kind} of agency '{agency}' is revoked")
                return e
        raise NotFound(f"no {kind} for agency '{agency}' in the federation directory")

    def keyring(self, now: dt.datetime | None = None) -> Keyring:
        """Every valid signing key: each party's current one, and its earlier ones until they expire."""
        now = now or utcnow()
        current = [
            KeyEntry(e.key_id, e.agency, e.kind, e.ed25519_public, e.revoked)
            for e in self.entries
            if e.key_id and e.ed25519_public
        ]
        earlier = [
            KeyEntry(key_id, e.agency, e.kind, public)
            for e in self.entries
            if not e.revoked
            for key_id, public, not_after in e.previous_keys
            if dt.datetime.fromisoformat(not_after) > now
        ]
        return Keyring([*earlier, *current])


def load_directory(path: Path, ca_cert: Path | x509.Certificate) -> FederationDirectory:
    """Load federation.json and verify the CA's signature over it (raise CryptoError if it fails)."""
    try:
        doc = json.loads(path.read_text())
        sig = base64.b64decode(doc.pop("signature"))
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"federation directory {path} is missing or malformed") from None
    pub = load_cert(ca_cert).public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise CryptoError("CA key type not supported")
    try:
        pub.verify(sig, _canonical_json(doc), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError("federation directory signature does not verify against the CA") from None
    if doc.get("format") != "xgate-federation/1":
        raise CryptoError("unknown federation directory format")
    return FederationDirectory(
        doc["federation"],
        doc["issued_at"],
        tuple(
            DirectoryEntry(
                e["agency"],
                e["kind"],
                e["address"],
                e["serial"],
                e["fingerprint"],
                e["key_id"],
                base64.b64decode(e["ed25519_public"]) if e["ed25519_public"] else None,
                e["revoked"],
                tuple(
                    (p["key_id"], base64.b64decode(p["ed25519_public"]), p["not_after"])
                    for p in e.get("previous_keys", ())
                ),
            )
            for e in doc["entries"]
        ),
    )
