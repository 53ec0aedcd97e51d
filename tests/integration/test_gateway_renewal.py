"""A gateway renews its certificate and keys while running: no restart.

The gateway (a process of its own, with its own identity next to the shared test federation's) gets
its certificate by request, serves a check, renews (`pki request` -> `sign` -> `install`), and then
the CA revokes its *old* certificate. Nodes check the CRL on every call and the directory drops the
old signing key, so the next check passes only if the running gateway switched its client
certificate towards the nodes, its envelope key and its REST certificate; without the reloads it
is refused by every node (the attack this shows: a revoked gateway identity keeps working).
"""

from __future__ import annotations

import socket
import ssl
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, start_gateway, write_gateway_config
from client.subjects import read_subjects
from crypto import csr, pki

pytestmark = pytest.mark.integration


def _served_serial(url: str, ca: Path) -> int:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _check(federation, url: str, ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    with federation.client("caseworker", url) as client:
        result = client.check("dibao", ids, "dibao", LEGAL_BASIS["dibao"], "case-renew", approval_ref=DEV_APPROVAL_REF)
    assert len(result.subjects) == len(ids)


def test_gateway_renewal_takes_effect_without_restart(federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ca_dir = federation.pki_dir / "ca"
    tls = tmp_path / "tls"
    first = csr.request("gateway", "gateway", tls, dns=["localhost"], ips=["127.0.0.1"])
    signed = csr.sign_request(ca_dir, first.csr_path, tmp_path / "inbox", kind="gateway", agency="gateway")
    csr.install(signed.cert_path, tls, ca_dir / pki.CA_CERT, ca_dir / pki.DIRECTORY)
    old_serial = signed.serial

    config_path = write_gateway_config(federation, {a: f"127.0.0.1:{p}" for a, p in federation.node_ports.items()},
                                       config_path=federation.gateway_dir / "gw-renew.toml")  # fmt: skip
    config = tomllib.loads(config_path.read_text())
    config["tls"] |= {"cert": str(tls / "gateway-gateway.cert.pem"), "key": str(tls / "gateway-gateway.key.pem"),
                      "signing_key": str(tls / "gateway-gateway.sign.pem")}  # fmt: skip
    config_path.write_text(tomli_w.dumps(config))
    url = start_gateway(federation, federation.supervisor, config_path=config_path, name="gw-renew")
    ids = read_subjects(federation.applicants)
    _check(federation, url, ids[100:110])
    assert _served_serial(url, federation.ca_cert) == old_serial

    renewal = csr.request("gateway", "gateway", tls, dns=["localhost"], ips=["127.0.0.1"])
    assert renewal.renewal
    signed = csr.sign_request(ca_dir, renewal.csr_path, tmp_path / "inbox", kind="gateway", agency="gateway")
    csr.install(signed.cert_path, tls, ca_dir / pki.CA_CERT, ca_dir / pki.DIRECTORY)
    time.sleep(2.5)  # files are looked at once a second
    pki.revoke(ca_dir, old_serial)  # the old identity is dead: nodes refuse its certificate and key

    _check(federation, url, ids[110:120])  # the same gateway process, with its renewed identity
    assert _served_serial(url, federation.ca_cert) == signed.serial
    log = (federation.log_dir / "gw-renew.log").read_text()
    assert "signing_key_reloaded" in log and "node_channels_renewed" in log
