"""Certificate requests (private keys never travel) and renewal without restarts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crypto import csr, pki
from crypto.directory import DirectoryKeyring, SigningKeyFile
from crypto.envelope import Envelopes, SigningKey
from protos.xgate.v1 import node_pb2
from xgate.errors import ConfigError, CryptoError, EnvelopeRejected


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca", "test CA")
    return tmp_path / "ca"


def _enroll(ca: Path, home: Path, kind: str = "node", agency: str = "tax", address: str = "") -> csr.Installed:
    made = csr.request(kind, agency, home / "tls", dns=[f"{agency}.example.test"], ips=["10.231.0.9"])
    signed = csr.sign_request(ca, made.csr_path, home / "inbox", kind=kind, agency=agency, address=address)
    return csr.install(signed.cert_path, home / "tls", ca / pki.CA_CERT, ca / pki.DIRECTORY)


def test_request_sign_install_keeps_keys_at_home(ca: Path, tmp_path: Path) -> None:
    home = tmp_path / "tax"
    made = csr.request("node", "tax", home / "tls", dns=["tax.example.test"], ips=["10.231.0.9"])
    for key in (made.key_path, made.signing_key_path):
        assert key is not None and key.stat().st_mode & 0o777 == 0o600
    request_text = made.csr_path.read_text()
    assert "PRIVATE KEY" not in request_text and made.csr_path.parent == home / "tls"
    inbox = tmp_path / "ca-outbox"  # everything the CA writes for the party: no private key among it
    signed = csr.sign_request(ca, made.csr_path, inbox, kind="node", agency="tax", address="tax.example.test:7443")
    assert [p.name for p in inbox.iterdir()] == ["node-tax.cert.pem"]
    done = csr.install(signed.cert_path, home / "tls", ca / pki.CA_CERT, ca / pki.DIRECTORY)
    cert = pki.load_cert(done.cert_path)
    ident = pki.verify_peer_certificate(cert, ca / pki.CA_CERT, ca / pki.CRL, "tax", "node")
    assert ident.agency == "tax"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "tax.example.test" in san.get_values_for_type(x509.DNSName)
    assert "tax.node.xgate" in san.get_values_for_type(x509.DNSName)
    entry = pki.load_directory(ca / pki.DIRECTORY, ca / pki.CA_CERT).entry("tax")
    assert entry.address == "tax.example.test:7443"
    assert entry.key_id == SigningKey.load(home / "tls/node-tax.sign.pem").key_id == done.key_id


def test_ca_refuses_a_request_for_another_agency(ca: Path, tmp_path: Path) -> None:
    made = csr.request("node", "tax", tmp_path / "tls")
    with pytest.raises(CryptoError, match="not for node of 'hrss'"):
        csr.sign_request(ca, made.csr_path, tmp_path / "out", kind="node", agency="hrss")
    with pytest.raises(CryptoError, match="not for gateway"):
        csr.sign_request(ca, made.csr_path, tmp_path / "out", kind="gateway", agency="tax")


def test_ca_refuses_a_signing_key_without_proof(ca: Path, tmp_path: Path) -> None:
    """A request naming someone else's Ed25519 key (with a proof made for another TLS key) is refused."""
    made = csr.request("node", "tax", tmp_path / "tls")
    original = x509.load_pem_x509_csr(made.csr_path.read_bytes())
    ext = original.extensions.get_extension_for_oid(csr.SIGNING_KEY_OID)
    forged_key = ec.generate_private_key(ec.SECP256R1())  # attacker's TLS key, victim's signing key + proof
    forged = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(original.subject)
        .add_extension(ext.value, critical=False)
        .sign(forged_key, hashes.SHA256())
    )
    path = tmp_path / "forged.csr.pem"
    path.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CryptoError, match="proof of possession"):
        csr.sign_request(ca, path, tmp_path / "out", kind="node", agency="tax")
    bare = x509.CertificateSigningRequestBuilder().subject_name(original.subject).sign(forged_key, hashes.SHA256())
    path.write_bytes(bare.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CryptoError, match="no Ed25519 signing key"):
        csr.sign_request(ca, path, tmp_path / "out", kind="node", agency="tax")


def test_install_refuses_foreign_certificates(ca: Path, tmp_path: Path) -> None:
    mine = csr.request("node", "tax", tmp_path / "tax/tls")
    theirs = csr.request("node", "tax", tmp_path / "elsewhere/tls")  # same agency, someone else's key
    signed = csr.sign_request(ca, theirs.csr_path, tmp_path / "out", kind="node", agency="tax")
    with pytest.raises(CryptoError, match="not our request"):
        csr.install(signed.cert_path, mine.key_path.parent, ca / pki.CA_CERT)
    other = tmp_path / "other-ca"
    pki.init_ca(other, "other CA")
    signed = csr.sign_request(other, mine.csr_path, tmp_path / "out2", kind="node", agency="tax")
    with pytest.raises(CryptoError, match="not issued by the federation CA"):
        csr.install(signed.cert_path, mine.key_path.parent, ca / pki.CA_CERT)


def test_supernode_key_in_flowers_format(ca: Path, tmp_path: Path) -> None:
    from crypto import flower_keys as fk

    _enroll(ca, tmp_path / "tax", kind="flower-supernode")
    tls = tmp_path / "tax/tls"
    key = fk.SuperNodeKey("tax", tls / "supernode-tax.ssh.key", tls / "supernode-tax.ssh.pub",
                          tls / "flower-supernode-tax.cert.pem")  # fmt: skip
    fk.load_private_key(key.private_key)
    fk.verify_supernode_key(key, ca / pki.CA_CERT, ca / pki.CRL)
    assert key.private_key.stat().st_mode & 0o777 == 0o600


def _request() -> node_pb2.CosignRequest:
    return node_pb2.CosignRequest(checkpoint=b"note", old_size=1)


def test_renewal_takes_effect_without_restarts(ca: Path, tmp_path: Path) -> None:
    """The node renews its keys while gateway and node keep running: before this change the gateway
    refused the node's envelopes (`unknown key id`) from the moment the CA published the renewal
    (the directory listed only the newest key) until the node restarted with the new key."""
    home = tmp_path / "tax"
    _enroll(ca, home, address="tax.example.test:7443")
    gateway_dir = tmp_path / "gw"
    shutil.copytree(ca, gateway_dir / "ca")  # the gateway's copy of the distributed directory
    clock = [0.0]
    gateway_keyring = DirectoryKeyring(gateway_dir / "ca" / pki.DIRECTORY, ca / pki.CA_CERT, clock=lambda: clock[0])
    node_key = SigningKeyFile(home / "tls/node-tax.sign.pem", clock=lambda: clock[0])
    node = Envelopes(node_key, gateway_keyring)
    old_id = node_key.key_id

    def accepted() -> bool:
        msg = _request()
        node.sign_request(msg, "CosignCheckpoint")
        try:
            Envelopes(SigningKey.generate("gateway", "gateway"), gateway_keyring).verify_request(
                msg, "CosignCheckpoint", agency="tax"
            )
        except EnvelopeRejected:
            return False
        return True

    assert accepted()
    made = csr.request("node", "tax", home / "tls")
    assert made.renewal and (home / "tls/node-tax.sign.pem.next").exists()
    signed = csr.sign_request(ca, made.csr_path, home / "inbox", kind="node", agency="tax")
    with pytest.raises(ConfigError, match="does not list the new signing key"):  # directory not distributed yet
        csr.install(signed.cert_path, home / "tls", ca / pki.CA_CERT, gateway_dir / "ca" / pki.DIRECTORY)
    shutil.copy(ca / pki.DIRECTORY, gateway_dir / "ca" / pki.DIRECTORY)  # distributed
    clock[0] += 2
    assert accepted(), "the old key must stay valid until its certificate expires"
    assert pki.load_directory(ca / pki.DIRECTORY, ca / pki.CA_CERT).entry("tax").address == "tax.example.test:7443"
    csr.install(signed.cert_path, home / "tls", ca / pki.CA_CERT, gateway_dir / "ca" / pki.DIRECTORY)
    clock[0] += 2
    assert node_key.current().key_id == signed.key_id != old_id
    assert node_key.key_id == signed.key_id
    assert accepted(), "the new key is accepted: nobody restarted"
    # Revoking the old serial (a leaked key) ends the overlap at once.
    old_serial = next(e for e in pki._index(pki.load_ca(ca)) if e["key_id"] == old_id)["serial"]
    pki.revoke(ca, old_serial)
    shutil.copy(ca / pki.DIRECTORY, gateway_dir / "ca" / pki.DIRECTORY)
    clock[0] += 2
    assert gateway_keyring.get(old_id) is None
    assert accepted()


def test_superlink_certificate_by_request(ca: Path, tmp_path: Path) -> None:
    """FEDERATED.md's commands: the gateway requests its SuperLink certificate with the name agencies
    dial and the loopback names its own flwr CLI dials; the CA certifies exactly those."""
    from crypto import flower_keys as fk

    made = csr.request("flower-superlink", "gateway", tmp_path / "tls", dns=["gw.example.gov", "localhost"],
                       ips=["127.0.0.1"])  # fmt: skip
    assert made.signing_key_path is None  # no envelope key for a SuperLink
    signed = csr.sign_request(ca, made.csr_path, tmp_path / "out", kind="flower-superlink", agency="gateway")
    done = csr.install(signed.cert_path, tmp_path / "tls", ca / pki.CA_CERT)
    ident = fk.verify_superlink_cert(done.cert_path, ca / pki.CA_CERT, ca / pki.CRL)
    assert ident.agency == "gateway" and set(signed.dns) == {"gw.example.gov", "localhost"}
    assert signed.ips == ["127.0.0.1"]
