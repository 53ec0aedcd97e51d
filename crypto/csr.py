"""Certificate requests: each party makes its own keys; only public keys and certificates travel.

    party:  request(kind, agency, tls_dir)   -> keys (0600) + <kind>-<agency>.csr.pem   (send the CSR)
    CA:     sign_request(ca_dir, csr, ...)    -> <kind>-<agency>.cert.pem + federation.json (send back)
    party:  install(cert, tls_dir, ca_cert)   -> checks the certificate against its own key and the CA

The CSR (PKCS#10, pyca/cryptography's builder) carries the TLS public key, the requested DNS/IP
names and, for parties that sign envelopes (gateway, node), the Ed25519 public key in a private
extension together with a signature by that key over the TLS public key: proof that the requester
holds both keys, so nobody can get a certificate and a directory entry for a key they do not hold.

Renewal: when the live key files exist, `request` writes the new ones beside them with a `.next`
suffix and the running service keeps using the old ones; `install` moves them into place once the
CA's new federation.json (which lists the new signing key, and the old one until its certificate
expires) has been distributed. Services re-read their signing key and TLS files when they change
(crypto/directory.SigningKeyFile, crypto/tls.reloading_server_credentials), so nobody restarts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID, ObjectIdentifier

from crypto import pki
from crypto.envelope import SigningKey, key_id_for
from crypto.peers import load_cert, verify_peer_certificate
from crypto.preflight import private_key_public
from xgate.errors import ConfigError, CryptoError, InvalidInput

# Private arc for xgate request attributes (not a registered enterprise number: only xgate reads it).
SIGNING_KEY_OID = ObjectIdentifier("1.3.6.1.4.1.58888.1.1")
_POP_CONTEXT = b"xgate-csr-signing-key/1\x00"
NEXT = ".next"


@dataclass(frozen=True)
class Request:
    csr_path: Path
    key_path: Path
    signing_key_path: Path | None
    renewal: bool


def key_paths(kind: str, agency: str, tls_dir: Path) -> tuple[Path, Path | None]:
    """(TLS/auth private key, Ed25519 signing key or None) as the party keeps them."""
    if kind == "flower-supernode":  # Flower reads only OpenSSH private keys
        return tls_dir / f"supernode-{agency}.ssh.key", None
    stem = tls_dir / f"{kind}-{agency}"
    return Path(f"{stem}.key.pem"), (Path(f"{stem}.sign.pem") if kind in pki.SIGNING_KINDS else None)


def _octets(data: bytes) -> bytes:
    """DER OCTET STRING (short or one-byte long form: our payload is 96 bytes)."""
    return (b"\x04" + bytes([len(data)]) if len(data) < 128 else b"\x04\x81" + bytes([len(data)])) + data


def _unwrap(der: bytes) -> bytes:
    if der[:1] != b"\x04":
        raise CryptoError("malformed signing-key extension in the request")
    return der[3:] if der[1] == 0x81 else der[2:]


def request(kind: str, agency: str, tls_dir: Path, dns: Iterable[str] = (), ips: Iterable[str] = ()) -> Request:
    """Generate this party's keys (0600) and a CSR; with live keys present, the new ones get `.next`."""
    pki._check_ids(agency, kind)
    key_path, sign_path = key_paths(kind, agency, tls_dir)
    renewal = key_path.exists()
    suffix = NEXT if renewal else ""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns if d]
    try:
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips if i]
    except ValueError:
        raise InvalidInput("not an IP address in --ip") from None
    builder = x509.CertificateSigningRequestBuilder().subject_name(pki._subject(kind, agency))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    signer: SigningKey | None = None
    if sign_path is not None:
        signer = SigningKey.generate(agency, kind)
        tls_public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        proof = signer.sign(_POP_CONTEXT + tls_public)
        builder = builder.add_extension(
            x509.UnrecognizedExtension(SIGNING_KEY_OID, _octets(signer.public_raw + proof)), critical=False
        )
    csr = builder.sign(key, hashes.SHA256())
    if kind == "flower-supernode":
        from crypto.flower_keys import openssh_private, openssh_public

        pki.write_private(Path(f"{key_path}{suffix}"), openssh_private(key))
        Path(f"{str(key_path).removesuffix('.key')}.pub{suffix}").write_bytes(openssh_public(key.public_key()))
    else:
        pki.write_private(Path(f"{key_path}{suffix}"), pki._pem_key(key))
    if signer is not None and sign_path is not None:
        signer.save(Path(f"{sign_path}{suffix}"))
    csr_path = tls_dir / f"{kind}-{agency}.csr.pem"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return Request(csr_path, key_path, sign_path, renewal)


@dataclass(frozen=True)
class Signed:
    cert_path: Path
    serial: int
    key_id: str | None
    dns: list[str]
    ips: list[str]


def sign_request(
    ca_dir: Path,
    csr_path: Path,
    out_dir: Path,
    *,
    kind: str,
    agency: str,
    days: int = 30,
    address: str = "",
    now: dt.datetime | None = None,
) -> Signed:
    """The CA's side: check the CSR is for the agency and kind the operator expects, that its
    signatures hold (TLS key, and the Ed25519 key's proof), then issue and publish."""
    pki._check_ids(agency, kind)
    pki.check_address(address)
    pki._check_days(days)
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{csr_path}: not a PEM certificate request ({exc})") from None
    if not csr.is_signature_valid:
        raise CryptoError("certificate request signature does not verify")
    org = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    unit = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if org != [agency] or unit != [kind]:
        raise CryptoError(f"the request is for {unit} of {org}, not for {kind} of '{agency}'")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise CryptoError("the requested key must be ECDSA P-256")
    ed25519_public = _signing_key(csr, public) if kind in pki.SIGNING_KINDS else None
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns, ips = san.get_values_for_type(x509.DNSName), [str(i) for i in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    ca = pki.load_ca(ca_dir)
    now = now or pki.utcnow()
    cert = pki._certificate(ca, kind, agency, public, dns, ips, days, now - dt.timedelta(minutes=5), loopback=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path = out_dir / f"{kind}-{agency}.cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki._record(ca, cert, agency, kind, address, ed25519_public, now)
    return Signed(cert_path, cert.serial_number, key_id_for(ed25519_public) if ed25519_public else None, dns, ips)


def _signing_key(csr: x509.CertificateSigningRequest, tls_public: ec.EllipticCurvePublicKey) -> bytes:
    try:
        ext = csr.extensions.get_extension_for_oid(SIGNING_KEY_OID).value
    except x509.ExtensionNotFound:
        raise CryptoError("the request carries no Ed25519 signing key (make it with `xgate pki request`)") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise CryptoError("malformed signing-key extension in the request")
    payload = _unwrap(ext.value)
    if len(payload) != 96:
        raise CryptoError("malformed signing-key extension in the request")
    raw, proof = payload[:32], payload[32:]
    der = tls_public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(proof, _POP_CONTEXT + der)
    except InvalidSignature:
        raise CryptoError("the signing key's proof of possession does not verify") from None
    return raw


@dataclass(frozen=True)
class Installed:
    cert_path: Path
    renewed: bool
    key_id: str | None


def install(cert_file: Path, tls_dir: Path, ca_cert: Path, directory: Path | None = None) -> Installed:
    """Place a certificate from the CA beside the key it certifies (the pending `.next` key of a
    renewal is moved into place). Refuses a certificate from another CA, for another party, for a
    key this party does not hold, or (renewal) before the distributed directory lists the new key."""
    cert = load_cert(cert_file)
    ident = verify_peer_certificate(cert, ca_cert, None, None, None)
    kind, agency = ident.kind, ident.agency
    key_path, sign_path = key_paths(kind, agency, tls_dir)
    pending = Path(f"{key_path}{NEXT}")
    if pending.exists() and private_key_public(pending) == cert.public_key():
        renewed = True
    elif key_path.exists() and private_key_public(key_path) == cert.public_key():
        renewed = False
    else:
        raise CryptoError(f"{cert_file.name} certifies a key that is not in {tls_dir} (not our request)")
    key_id = None
    if sign_path is not None:
        signer_path = Path(f"{sign_path}{NEXT}") if renewed else sign_path
        key_id = SigningKey.load(signer_path).key_id
        if directory is not None:
            from crypto.pki import load_directory

            if load_directory(directory, ca_cert).keyring().get(key_id) is None:
                raise ConfigError(
                    f"{directory} does not list the new signing key {key_id} yet: install the CA's newest "
                    "federation.json first, then the certificate"
                )
    target = tls_dir / f"{kind}-{agency}.cert.pem"
    if renewed:  # keys first, then the certificate: services switch when the pair matches again
        if sign_path is not None:
            Path(f"{sign_path}{NEXT}").replace(sign_path)
        if kind == "flower-supernode":
            pub = Path(f"{str(key_path).removesuffix('.key')}.pub")
            Path(f"{pub}{NEXT}").replace(pub)
        pending.replace(key_path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(target)
    return Installed(target, renewed, key_id)


__all__ = ["Installed", "Request", "Signed", "install", "key_paths", "request", "sign_request"]
