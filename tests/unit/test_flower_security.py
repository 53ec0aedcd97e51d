"""Flower transport material and flags (no processes): key formats Flower itself accepts, CA binding
of SuperNode keys, SuperLink certificate names, and the flags/config the deployment emits."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message, verify_signature
from structlog.testing import capture_logs
from typer.testing import CliRunner

from app.train_cli import app
from crypto import flower_keys as fk
from crypto import pki
from federated.deployment import Federation, cli_config, superlink_flags, supernode_flags
from xgate.errors import ConfigError, CryptoError


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _sans(cert_path: Path) -> x509.SubjectAlternativeName:
    cert = pki.load_cert(cert_path)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> fk.FlowerSecurity:
    return fk.prepare_flower_security(tmp_path_factory.mktemp("pki"), ["tax", "civil"])


# -- key formats ----------------------------------------------------------------------------------


def test_supernode_key_is_what_flower_reads(tmp_path: Path) -> None:
    key = fk.generate_supernode_key(tmp_path, "tax")
    assert _mode(key.private_key) == 0o600 and key.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH")
    # The SuperNode loads the private key exactly like this (flower_supernode._try_setup_client_authentication).
    priv = serialization.load_ssh_private_key(key.private_key.read_bytes(), None)
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    # `flwr supernode register` reads the public key file with its own loader.
    registered = try_load_public_key(key.public_key)
    assert registered == public_key_to_bytes(priv.public_key())
    # Flower's node auth: a signed timestamp verifies under the registered key.
    sig = sign_message(priv, b"2026-11-23T12:00:00+00:00")
    assert verify_signature(fk.load_public_key(key.public_key), b"2026-11-23T12:00:00+00:00", sig)
    assert not verify_signature(fk.load_public_key(key.public_key), b"2026-11-23T12:00:01+00:00", sig)


def test_non_ec_and_malformed_keys_refused(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.pub").write_bytes(
        ed.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(CryptoError, match="EC keys"):
        fk.load_public_key(tmp_path / "ed.pub")
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(CryptoError, match="OpenSSH private key"):
        fk.load_private_key(tmp_path / "junk.key")
    with pytest.raises(CryptoError, match="agency id"):
        fk.generate_supernode_key(tmp_path, "../evil")


# -- CA binding ---------------------------------------------------------------------------------


def test_prepared_material_is_bound_short_lived_and_private(material: fk.FlowerSecurity, tmp_path: Path) -> None:
    fk.verify_flower_security(material)
    root = material.ca_cert.parent
    assert not (root / "ca" / pki.CA_KEY).exists()  # ephemeral job CA: key gone after issuance
    assert _mode(material.superlink_key) == 0o600
    for agency, key in material.supernode_keys.items():
        assert key.agency == agency and _mode(key.private_key) == 0o600
        assert key.certificate is not None and not list(key.certificate.parent.glob("*.key.pem"))  # no PEM copy
        ident = pki.peer_identity(pki.load_cert(key.certificate))
        assert (ident.agency, ident.kind) == (agency, "flower-supernode")
        cert = pki.load_cert(key.certificate)
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 1
    link = _sans(material.superlink_cert)
    assert ipaddress.ip_address("127.0.0.1") in link.get_values_for_type(x509.IPAddress)
    # Python's TLS stack (uvicorn's) accepts the SuperLink certificate and key as written.
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(material.superlink_cert, material.superlink_key)


def test_supernode_key_must_match_its_certificate(material: fk.FlowerSecurity, tmp_path: Path) -> None:
    tax = material.supernode_keys["tax"]
    other = fk.generate_supernode_key(tmp_path, "tax")
    swapped = fk.SuperNodeKey("tax", other.private_key, other.public_key, tax.certificate)
    with pytest.raises(CryptoError, match="does not match its certificate"):
        fk.verify_supernode_key(swapped, material.ca_cert, material.crl)
    with pytest.raises(CryptoError, match="no certificate"):
        fk.verify_supernode_key(other, material.ca_cert)
    assert tax.certificate is not None
    with pytest.raises(CryptoError, match="wrong kind"):  # a SuperNode certificate cannot serve as SuperLink
        fk.verify_superlink_cert(tax.certificate, material.ca_cert)
    civil_cert = fk.SuperNodeKey("tax", tax.private_key, tax.public_key, material.supernode_keys["civil"].certificate)
    with pytest.raises(CryptoError, match="another agency"):
        fk.verify_supernode_key(civil_cert, material.ca_cert)
    mislabelled = fk.FlowerSecurity(
        material.ca_cert, material.superlink_cert, material.superlink_key, {"civil": tax}, material.crl
    )
    with pytest.raises(CryptoError, match="belongs to 'tax'"):
        fk.verify_flower_security(mislabelled)


def test_federation_ca_is_reused_and_revocation_refused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    pki.init_ca(ca_dir, "test federation CA")
    sec = fk.prepare_flower_security(tmp_path / "job", ["tax"], ca_dir=ca_dir, hosts=["link.example.org"])
    assert (ca_dir / pki.CA_KEY).exists() and sec.crl == ca_dir / pki.CRL
    assert pki.load_cert(sec.superlink_cert).issuer == pki.load_ca(ca_dir).cert.subject
    assert "link.example.org" in _sans(sec.superlink_cert).get_values_for_type(x509.DNSName)
    fk.verify_flower_security(sec)
    serial = pki.load_cert(sec.supernode_keys["tax"].certificate or Path()).serial_number
    pki.revoke(ca_dir, serial)
    with pytest.raises(CryptoError, match="revoked"):
        fk.verify_flower_security(sec)


def test_named_host_certificate_leaves_out_loopback(tmp_path: Path) -> None:
    sec = fk.prepare_flower_security(tmp_path, [], hosts=["link.example.org", "0.0.0.0"], loopback=False)
    sans = _sans(sec.superlink_cert)
    assert sans.get_values_for_type(x509.IPAddress) == []
    assert "localhost" not in sans.get_values_for_type(x509.DNSName)
    assert "link.example.org" in sans.get_values_for_type(x509.DNSName)


# -- flags and config -----------------------------------------------------------------------------


def test_flags_use_tls_and_supernode_auth(material: fk.FlowerSecurity) -> None:
    link = superlink_flags(material)
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert link[link.index("--ssl-certfile") + 1] == str(material.superlink_cert.resolve())
    assert link[link.index("--ssl-keyfile") + 1] == str(material.superlink_key.resolve())
    assert link[link.index("--ssl-ca-certfile") + 1] == str(material.ca_cert.resolve())
    key = material.supernode_keys["tax"]
    node = supernode_flags(material, key)
    assert node == [
        "--root-certificates",
        str(material.ca_cert.resolve()),
        "--auth-supernode-private-key",
        str(key.private_key.resolve()),
    ]
    cfg = cli_config("127.0.0.1:9093", material)["superlink"]
    assert cfg["default"] == "xgate"
    assert cfg["xgate"] == {"address": "127.0.0.1:9093", "root-certificates": str(material.ca_cert.resolve())}


def test_insecure_only_when_explicit(material: fk.FlowerSecurity, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="insecure=True"):
        superlink_flags(None)
    with pytest.raises(ConfigError, match="conflicts"):
        superlink_flags(material, insecure=True)
    with pytest.raises(ConfigError, match="authentication key"):
        supernode_flags(material, None)
    assert superlink_flags(None, insecure=True) == ["--insecure"]
    assert supernode_flags(None, None, insecure=True) == ["--insecure"]
    assert cli_config("127.0.0.1:1", None, insecure=True)["superlink"]["xgate"]["insecure"] is True
    with pytest.raises(ConfigError):
        Federation(tmp_path)
    with capture_logs() as logs:
        Federation(tmp_path, insecure=True)
    assert any(e["event"] == "flower_insecure" and e["log_level"] == "warning" for e in logs)


def test_train_cli_warns_on_insecure_and_checks_ca(tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "submit",
        "--job",
        str(tmp_path / "none.toml"),
        "--nodes",
        str(tmp_path / "n.toml"),
        "--root",
        str(tmp_path),
    ]
    res = runner.invoke(app, [*args, "--insecure"])
    assert res.exit_code != 0 and "WARNING: --insecure" in res.output
    res = runner.invoke(app, [*args, "--insecure", "--ca", str(tmp_path)])
    assert res.exit_code != 0 and "exclude each other" in res.output
    res = runner.invoke(app, [*args, "--ca", str(tmp_path / "noca")])
    assert res.exit_code != 0 and "no CA in" in res.output and "WARNING" not in res.output
