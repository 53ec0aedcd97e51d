"""Peer certificates of the federation: loading, CRL freshness and the full peer check (no I/O).

Every TLS edge (gateway, nodes, Flower pre-flight) calls ``verify_peer_certificate``; it raises
CryptoError naming the first failed condition, in a fixed order: issued by our CA, validity
window, CRL (signed, fresh, serial not listed), kind, agency. Issuance lives in crypto/pki.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from xgate.errors import CryptoError

AGENCY_URI = "urn:xgate:agency:"
ROLE_URI = "urn:xgate:role:"
DEFAULT_CRL_GRACE = dt.timedelta(hours=24)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def load_cert(data: bytes | Path | x509.Certificate) -> x509.Certificate:
    if isinstance(data, x509.Certificate):
        return data
    raw = data.read_bytes() if isinstance(data, Path) else data
    try:
        return x509.load_pem_x509_certificate(raw)
    except ValueError:
        raise CryptoError("not a PEM X.509 certificate") from None


def load_crl(data: bytes | Path | x509.CertificateRevocationList) -> x509.CertificateRevocationList:
    if isinstance(data, x509.CertificateRevocationList):
        return data
    raw = data.read_bytes() if isinstance(data, Path) else data
    try:
        return x509.load_pem_x509_crl(raw)
    except ValueError:
        raise CryptoError("not a PEM CRL") from None


@dataclass(frozen=True)
class PeerIdentity:
    agency: str
    kind: str
    serial: int
    fingerprint: str
    not_after: dt.datetime


def check_crl(
    crl: x509.CertificateRevocationList, ca: x509.Certificate, now: dt.datetime, grace: dt.timedelta = DEFAULT_CRL_GRACE
) -> None:
    """The CRL must be signed by our CA and not older than next_update + grace (fail closed)."""
    pub = ca.public_key()
    if crl.issuer != ca.subject or not crl.is_signature_valid(pub):  # type: ignore[arg-type]
        raise CryptoError("CRL is not signed by the federation CA")
    nxt = crl.next_update_utc
    if nxt is None or now > nxt + grace:
        raise CryptoError("CRL is stale: past next update plus grace period; refresh it with `xgate pki crl`")


def peer_identity(cert: x509.Certificate) -> PeerIdentity:
    """Agency and kind as carried in the SAN URIs (must agree with subject O/OU)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CryptoError("certificate carries no agency (no subjectAltName)") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    agencies = [u[len(AGENCY_URI) :] for u in uris if u.startswith(AGENCY_URI)]
    kinds = [u[len(ROLE_URI) :] for u in uris if u.startswith(ROLE_URI)]
    if len(agencies) != 1 or len(kinds) != 1:
        raise CryptoError("certificate must carry exactly one agency URI and one role URI")
    org = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    unit = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if org != [agencies[0]] or unit != [kinds[0]]:
        raise CryptoError("certificate subject O/OU disagree with its agency/role URIs")
    return PeerIdentity(agencies[0], kinds[0], cert.serial_number, fingerprint(cert), cert.not_valid_after_utc)


def verify_peer_certificate(
    cert_pem: bytes | x509.Certificate,
    ca: bytes | Path | x509.Certificate,
    crl: bytes | Path | x509.CertificateRevocationList | None,
    expected_agency: str | Iterable[str] | None,
    expected_kind: str | Iterable[str] | None,
    now: dt.datetime | None = None,
    crl_grace: dt.timedelta = DEFAULT_CRL_GRACE,
) -> PeerIdentity:
    """Full check of a peer certificate; raise CryptoError naming the first failed condition.

    Order: issued by our CA, validity window, CRL (signed, fresh, serial not listed), kind,
    agency. crl=None skips revocation (callers decide whether that is acceptable).
    """
    now = now or utcnow()
    cert, ca_cert = load_cert(cert_pem), load_cert(ca)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CryptoError("certificate not issued by the federation CA (unknown CA)") from None
    if now < cert.not_valid_before_utc:
        raise CryptoError("certificate not yet valid", serial=str(cert.serial_number))
    if now > cert.not_valid_after_utc:
        raise CryptoError("certificate expired", serial=str(cert.serial_number))
    if crl is not None:
        crl_obj = load_crl(crl)
        check_crl(crl_obj, ca_cert, now, crl_grace)
        if crl_obj.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise CryptoError("certificate revoked", serial=str(cert.serial_number))
    ident = peer_identity(cert)
    if expected_kind is not None:
        kinds = {expected_kind} if isinstance(expected_kind, str) else set(expected_kind)
        if ident.kind not in kinds:
            raise CryptoError(f"wrong kind of certificate: {ident.kind}", agency=ident.agency)
    if expected_agency is not None:
        agencies = {expected_agency} if isinstance(expected_agency, str) else set(expected_agency)
        if ident.agency not in agencies:
            raise CryptoError(f"certificate of another agency: {ident.agency}")
    return ident
