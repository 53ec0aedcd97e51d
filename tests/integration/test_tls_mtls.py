"""mTLS between gateway and node over real gRPC on loopback: every refusal, then a good client still works.

Each refusal case starts a grpc.aio server with the federation CA, the node's certificate and the
peer-check interceptor; a bad client is refused and, on the same server, a good gateway client
is then served (a refusal must not wedge the server).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from crypto import pki, tls
from protos.xgate.v1 import node_pb2, node_pb2_grpc
from xgate.errors import TlsHandshakeFailed, Unauthenticated

pytestmark = pytest.mark.integration
NOW = dt.datetime.now(dt.UTC)


@dataclass
class Pki:
    root: Path
    ca: Path
    crl: Path
    node: tls.TlsPaths
    gateway: tls.TlsPaths

    def client(self, issued: pki.Issued, ca: Path | None = None) -> tls.TlsPaths:
        return tls.TlsPaths(issued.cert_path, issued.key_path, ca or self.ca, self.crl)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca", "Test Federation")
    node = pki.issue(root / "ca", "node", "tax", root / "tax")
    gw = pki.issue(root / "ca", "gateway", "gateway", root / "gw")
    ca, crl = root / "ca" / pki.CA_CERT, root / "ca" / pki.CRL
    return Pki(
        root,
        ca,
        crl,
        tls.TlsPaths(node.cert_path, node.key_path, ca, crl),
        tls.TlsPaths(gw.cert_path, gw.key_path, ca, crl),
    )


class Servicer(node_pb2_grpc.AgencyNodeServicer):
    async def Health(self, request, context):
        peer = tls.current_peer()
        assert peer is not None
        return node_pb2.HealthResponse(agency="tax", status="serving", version=f"{peer.kind}:{peer.agency}")


async def _serve(fed: Pki, verifier: tls.PeerVerifier | None = None) -> tuple[grpc.aio.Server, str]:
    verifier = verifier or tls.node_peer_verifier(fed.node)
    server = grpc.aio.server(interceptors=[tls.AioPeerCheckInterceptor(verifier)])
    node_pb2_grpc.add_AgencyNodeServicer_to_server(Servicer(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(fed.node))
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _health(channel: grpc.aio.Channel) -> node_pb2.HealthResponse:
    async with channel:
        return await node_pb2_grpc.AgencyNodeStub(channel).Health(node_pb2.HealthRequest(), timeout=10)


def _refused_then_served(
    fed: Pki, bad: Callable[[str], grpc.aio.Channel], code: grpc.StatusCode, verifier: tls.PeerVerifier | None = None
) -> str:
    async def scenario() -> str:
        server, addr = await _serve(fed, verifier)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _health(bad(addr))
            assert info.value.code() == code, info.value.details()
            if verifier is None:  # the server still serves a good client afterwards
                ok = await _health(tls.secure_channel(addr, "tax", fed.gateway))
                assert ok.version == "gateway:gateway"
            return info.value.details() or ""
        finally:
            await server.stop(None)

    return asyncio.run(scenario())


def test_good_gateway_client_is_served(fed: Pki) -> None:
    async def scenario() -> None:
        server, addr = await _serve(fed)
        try:
            reply = await _health(tls.secure_channel(addr, "tax", fed.gateway))
            assert reply.version == "gateway:gateway"
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_unknown_ca_refused(fed: Pki) -> None:
    pki.init_ca(fed.root / "rogue-ca", "Rogue")
    rogue = pki.issue(fed.root / "rogue-ca", "gateway", "gateway", fed.root / "rogue")
    bad = fed.client(rogue)  # trusts our CA, but presents a certificate from another CA
    _refused_then_served(fed, lambda a: tls.secure_channel(a, "tax", bad), grpc.StatusCode.UNAVAILABLE)


def test_expired_client_cert_refused(fed: Pki) -> None:
    old = pki.issue(
        fed.root / "ca", "gateway", "gateway", fed.root / "expired", days=30, not_before=NOW - dt.timedelta(days=40)
    )
    _refused_then_served(fed, lambda a: tls.secure_channel(a, "tax", fed.client(old)), grpc.StatusCode.UNAVAILABLE)


def test_revoked_client_cert_refused(fed: Pki) -> None:
    victim = pki.issue(fed.root / "ca", "gateway", "gateway", fed.root / "revoked")
    pki.revoke(fed.root / "ca", victim.serial)
    details = _refused_then_served(
        fed, lambda a: tls.secure_channel(a, "tax", fed.client(victim)), grpc.StatusCode.UNAUTHENTICATED
    )
    assert "revoked" in json.loads(details)["message"]


def test_cert_of_another_agency_refused(fed: Pki) -> None:
    other = pki.issue(fed.root / "ca", "gateway", "hrss", fed.root / "hrss-gw")
    details = _refused_then_served(
        fed, lambda a: tls.secure_channel(a, "tax", fed.client(other)), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "hrss" in details


def test_node_cert_as_client_refused_wrong_kind(fed: Pki) -> None:
    peer_node = pki.issue(fed.root / "ca", "node", "police", fed.root / "police")
    details = _refused_then_served(
        fed, lambda a: tls.secure_channel(a, "tax", fed.client(peer_node)), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "kind" in details


def test_missing_client_cert_refused(fed: Pki) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=fed.ca.read_bytes())
    _refused_then_served(
        fed,
        lambda a: grpc.aio.secure_channel(a, creds, options=tls.channel_options("tax")),
        grpc.StatusCode.UNAVAILABLE,
    )


def test_plaintext_client_refused(fed: Pki) -> None:
    _refused_then_served(fed, lambda a: grpc.aio.insecure_channel(a), grpc.StatusCode.UNAVAILABLE)


def test_client_pinning_another_agency_refuses_node(fed: Pki) -> None:
    # The gateway meant to reach 'hrss' but the address answers with tax's certificate.
    _refused_then_served(fed, lambda a: tls.secure_channel(a, "hrss", fed.gateway), grpc.StatusCode.UNAVAILABLE)


def test_stale_crl_refuses_every_peer(fed: Pki) -> None:
    later = NOW + dt.timedelta(days=9)  # CRL valid 7 days + 24 h grace; certificates still valid
    verifier = tls.PeerVerifier(fed.ca, fed.crl, {"gateway"}, {"gateway"}, clock=lambda: later)
    details = _refused_then_served(
        fed, lambda a: tls.secure_channel(a, "tax", fed.gateway), grpc.StatusCode.UNAUTHENTICATED, verifier=verifier
    )
    assert "stale" in details


def test_verify_server_preflight_checks_agency_and_crl(fed: Pki) -> None:
    async def scenario() -> None:
        server, addr = await _serve(fed)
        try:
            ident = await asyncio.to_thread(tls.verify_server, addr, "tax", fed.gateway)
            assert (ident.agency, ident.kind) == ("tax", "node")
            with pytest.raises(TlsHandshakeFailed) as info:  # the name pin fails inside the handshake
                await asyncio.to_thread(tls.verify_server, addr, "hrss", fed.gateway)
            assert info.value.agency == "hrss" and info.value.http_status == 503
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_verify_server_refuses_revoked_node(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "F2")
    node = pki.issue(tmp_path / "ca", "node", "tax", tmp_path / "n")
    gw = pki.issue(tmp_path / "ca", "gateway", "gateway", tmp_path / "g")
    ca, crl = tmp_path / "ca" / pki.CA_CERT, tmp_path / "ca" / pki.CRL
    node_tls = tls.TlsPaths(node.cert_path, node.key_path, ca, crl)
    pki.revoke(tmp_path / "ca", node.serial)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(node_tls))
    server.start()
    try:
        with pytest.raises(Unauthenticated, match="revoked"):
            tls.verify_server(f"127.0.0.1:{port}", "tax", tls.TlsPaths(gw.cert_path, gw.key_path, ca, crl))
    finally:
        server.stop(None)


def test_sync_server_interceptor_refuses_revoked_and_serves_good(tmp_path: Path, fed: Pki) -> None:
    class SyncServicer(node_pb2_grpc.AgencyNodeServicer):
        def Health(self, request, context):
            return node_pb2.HealthResponse(agency="tax", version=tls.current_peer().agency)

    victim = pki.issue(fed.root / "ca", "gateway", "gateway", tmp_path / "v")
    pki.revoke(fed.root / "ca", victim.serial)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=tls.node_interceptors(fed.node))
    node_pb2_grpc.add_AgencyNodeServicer_to_server(SyncServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.node_server_credentials(fed.node))
    server.start()
    try:
        addr = f"127.0.0.1:{port}"
        with tls.secure_channel(addr, "tax", fed.client(victim), aio=False) as ch, pytest.raises(grpc.RpcError) as info:
            node_pb2_grpc.AgencyNodeStub(ch).Health(node_pb2.HealthRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with tls.secure_channel(addr, "tax", fed.gateway, aio=False) as ch:
            assert node_pb2_grpc.AgencyNodeStub(ch).Health(node_pb2.HealthRequest(), timeout=10).version == "gateway"
    finally:
        server.stop(None)
