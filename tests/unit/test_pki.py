"""Federation PKI: issuance contents, each refusal of verify_peer_certificate, CRL and directory."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crypto import pki
from xgate.errors import ConfigError, CryptoError, InvalidInput, NotFound

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki") / "ca"
    pki.init_ca(d, "Test Federation")
    return d


def _verify(
    cert: Path,
    ca_dir: Path,
    agency: str | None = "tax",
    kind: str | None = "node",
    now: dt.datetime | None = None,
    crl: object = "default",
) -> pki.PeerIdentity:
    crl_arg = ca_dir / pki.CRL if crl == "default" else crl
    return pki.verify_peer_certificate(cert.read_bytes(), ca_dir / pki.CA_CERT, crl_arg, agency, kind, now=now)


def test_issued_cert_carries_agency_role_and_names(ca_dir: Path, tmp_path: Path) -> None:
    issued = pki.issue(ca_dir, "node", "civil_affairs", tmp_path, dns=["node.example"], ips=["10.0.0.5"])
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "urn:xgate:agency:civil_affairs" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert "urn:xgate:role:node" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert {"civil-affairs.node.xgate", "localhost", "node.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    assert issued.key_path.stat().st_mode & 0o077 == 0
    assert issued.signing_key_path is not None and issued.key_id
    ident = _verify(issued.cert_path, ca_dir, "civil_affairs", "node")
    assert (ident.agency, ident.kind, ident.serial) == ("civil_affairs", "node", issued.serial)


def test_user_cert_has_no_signing_key(ca_dir: Path, tmp_path: Path) -> None:
    assert pki.issue(ca_dir, "user", "tax", tmp_path).signing_key_path is None


def test_refuse_unknown_ca(ca_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "rogue", "Rogue")
    rogue = pki.issue(tmp_path / "rogue", "node", "tax", tmp_path)
    with pytest.raises(CryptoError, match="unknown CA"):
        _verify(rogue.cert_path, ca_dir)


def test_refuse_expired(ca_dir: Path, tmp_path: Path) -> None:
    old = pki.issue(ca_dir, "node", "tax", tmp_path, days=30, not_before=NOW - dt.timedelta(days=31))
    with pytest.raises(CryptoError, match="expired"):
        _verify(old.cert_path, ca_dir)


def test_refuse_not_yet_valid(ca_dir: Path, tmp_path: Path) -> None:
    future = pki.issue(ca_dir, "node", "tax", tmp_path, not_before=NOW + dt.timedelta(days=1))
    with pytest.raises(CryptoError, match="not yet valid"):
        _verify(future.cert_path, ca_dir)


def test_refuse_revoked(ca_dir: Path, tmp_path: Path) -> None:
    victim = pki.issue(ca_dir, "node", "tax", tmp_path)
    _verify(victim.cert_path, ca_dir)
    pki.revoke(ca_dir, victim.serial)
    with pytest.raises(CryptoError, match="revoked"):
        _verify(victim.cert_path, ca_dir)


def test_refuse_wrong_agency(ca_dir: Path, tmp_path: Path) -> None:
    other = pki.issue(ca_dir, "node", "hrss", tmp_path)
    with pytest.raises(CryptoError, match="another agency"):
        _verify(other.cert_path, ca_dir, agency="tax")


def test_refuse_wrong_kind(ca_dir: Path, tmp_path: Path) -> None:
    user = pki.issue(ca_dir, "user", "tax", tmp_path)
    with pytest.raises(CryptoError, match="wrong kind"):
        _verify(user.cert_path, ca_dir, kind="node")


def test_refuse_stale_crl(ca_dir: Path, tmp_path: Path) -> None:
    good = pki.issue(ca_dir, "node", "tax", tmp_path)
    _verify(good.cert_path, ca_dir, now=NOW + dt.timedelta(days=7, hours=23))  # within grace
    with pytest.raises(CryptoError, match="stale"):
        _verify(good.cert_path, ca_dir, now=NOW + dt.timedelta(days=8, hours=1))


def test_refuse_crl_from_another_ca(ca_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "rogue", "Rogue")
    good = pki.issue(ca_dir, "node", "tax", tmp_path)
    with pytest.raises(CryptoError, match="CRL is not signed"):
        _verify(good.cert_path, ca_dir, crl=tmp_path / "rogue" / pki.CRL)


def test_refuse_cert_without_agency_uri(ca_dir: Path) -> None:
    ca = pki.load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    with pytest.raises(CryptoError, match="no subjectAltName"):
        pki.verify_peer_certificate(cert, ca.cert, None, None, None)


def test_refuse_garbage_pem(ca_dir: Path) -> None:
    with pytest.raises(CryptoError, match="not a PEM"):
        pki.verify_peer_certificate(b"hello", ca_dir / pki.CA_CERT, None, None, None)


def test_init_twice_refused(ca_dir: Path) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        pki.init_ca(ca_dir, "again")


def test_bad_agency_and_kind_refused(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        pki.issue(ca_dir, "node", "Tax-Bureau", tmp_path)
    with pytest.raises(InvalidInput):
        pki.issue(ca_dir, "root", "tax", tmp_path)


def test_revoke_unknown_serial(ca_dir: Path) -> None:
    with pytest.raises(NotFound):
        pki.revoke(ca_dir, 12345)


def test_directory_binds_signing_keys_and_marks_revoked(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    pki.init_ca(ca, "F")
    node = pki.issue(ca, "node", "tax", tmp_path, address="127.0.0.1:7001")
    gw = pki.issue(ca, "gateway", "gateway", tmp_path)
    directory = pki.load_directory(ca / pki.DIRECTORY, ca / pki.CA_CERT)
    entry = directory.entry("tax")
    assert (entry.address, entry.key_id, entry.fingerprint) == ("127.0.0.1:7001", node.key_id, node.fingerprint)
    ring = directory.keyring()
    assert ring.get(gw.key_id) is not None and ring.get(node.key_id) is not None
    pki.set_address(ca, "tax", "node", "10.1.2.3:7001")
    assert pki.load_directory(ca / pki.DIRECTORY, ca / pki.CA_CERT).entry("tax").address == "10.1.2.3:7001"
    pki.revoke(ca, node.serial)
    directory = pki.load_directory(ca / pki.DIRECTORY, ca / pki.CA_CERT)
    assert directory.keyring().get(node.key_id).revoked
    with pytest.raises(CryptoError, match="revoked"):
        directory.entry("tax")


def test_directory_tampering_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    pki.init_ca(ca, "F")
    pki.issue(ca, "node", "tax", tmp_path, address="127.0.0.1:7001")
    doc = json.loads((ca / pki.DIRECTORY).read_text())
    doc["entries"][0]["address"] = "203.0.113.9:7001"
    (ca / pki.DIRECTORY).write_text(json.dumps(doc))
    with pytest.raises(CryptoError, match="signature"):
        pki.load_directory(ca / pki.DIRECTORY, ca / pki.CA_CERT)


def test_directory_signed_by_other_ca_refused(ca_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "rogue", "Rogue")
    with pytest.raises(CryptoError, match="signature"):
        pki.load_directory(tmp_path / "rogue" / pki.DIRECTORY, ca_dir / pki.CA_CERT)


def test_target_name_maps_underscores() -> None:
    assert pki.target_name("civil_affairs") == "civil-affairs.node.xgate"
