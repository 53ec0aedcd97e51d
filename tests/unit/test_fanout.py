"""gateway/fanout.py NodeDirectory over real gRPC on 127.0.0.1 (in-process servers, no processes).

Concurrency (every node is called before any answers), the deadline, all-or-nothing (one node's
failure cancels the calls still running and fails the check), and each node status mapped
faithfully through the real node edge (nodes/server.py NodeServicer + NodeService).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.fanout import NodeDirectory, NodeEndpoint
from nodes.server import NodeServicer
from nodes.service import NodeService
from protos.xgate.v1 import node_pb2, node_pb2_grpc
from tests.unit.test_node_service import INCOME, SUBJECTS, _request, _store
from xgate.errors import (
    BudgetExhausted,
    NodePayloadTooLarge,
    NodeProtocolError,
    NodeRateLimited,
    NodeRefused,
    NodeTimeout,
    NodeUnavailable,
    PolicyDenied,
    TlsHandshakeFailed,
    XgateError,
)
from xgate.errors import retry_after_seconds as retry_after

Handler = Callable[[node_pb2.EncryptRequest, grpc.aio.ServicerContext], Any]


class AioNode(node_pb2_grpc.AgencyNodeServicer):
    def __init__(self, agency: str, handler: Handler) -> None:
        self.agency, self.handler = agency, handler

    async def EncryptValues(self, request: node_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self.handler(request, context)


def answer(agency: str, request: node_pb2.EncryptRequest) -> node_pb2.EncryptResponse:
    response = node_pb2.EncryptResponse(agency=agency, request_id=request.context.request_id)
    for query in request.elements:
        response.elements.add(element=query.element, plain_values=[1] * len(request.pseudonyms))
    return response


@asynccontextmanager
async def aio_nodes(handlers: dict[str, Handler]) -> AsyncIterator[NodeDirectory]:
    servers, endpoints = [], {}
    for agency, handler in handlers.items():
        server = grpc.aio.server()
        node_pb2_grpc.add_AgencyNodeServicer_to_server(AioNode(agency, handler), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        endpoints[agency] = NodeEndpoint(agency, f"127.0.0.1:{port}")
    directory = NodeDirectory(endpoints)
    try:
        yield directory
    finally:
        await directory.close()
        await asyncio.gather(*(s.stop(None) for s in servers))


def requests_for(*agencies: str) -> dict[str, node_pb2.EncryptRequest]:
    return {a: _request(elements=[(f"{a}.x", 0)]) for a in agencies}


def test_every_node_is_called_before_any_answers() -> None:
    async def scenario() -> None:
        barrier = asyncio.Barrier(3)  # passes only when all three calls are in flight at once

        def handler(agency: str) -> Handler:
            async def h(request: node_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> Any:
                await barrier.wait()
                return answer(agency, request)

            return h

        async with aio_nodes({a: handler(a) for a in ("tax", "hrss", "household")}) as directory:
            answers = await directory.encrypt_all(requests_for("tax", "hrss", "household"), deadline_s=5)
        assert {a: r.agency for a, r in answers.items()} == {"tax": "tax", "hrss": "hrss", "household": "household"}

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_node_past_the_deadline_fails_the_check_in_time() -> None:
    async def slow(request: node_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> Any:
        await asyncio.sleep(10)
        return answer("hrss", request)

    async def fast(request: node_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> Any:
        return answer("tax", request)

    async def scenario() -> float:
        async with aio_nodes({"tax": fast, "hrss": slow}) as directory:
            started = time.monotonic()
            with pytest.raises(NodeTimeout, match="agency 'hrss'") as info:
                await directory.encrypt_all(requests_for("tax", "hrss"), deadline_s=0.5)
            assert info.value.http_status == 504
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 5  # the deadline, not the slow node, decided


def test_one_failing_node_cancels_the_others_and_fails_the_whole_check() -> None:
    cancelled = asyncio.Event()
    tax_running = asyncio.Event()

    async def hanging(request: node_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> Any:
        tax_running.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()  # the gateway cancelled this call when another node failed
            raise
        return answer("tax", request)

    async def refusing(request: node_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> Any:
        # Refuse only once tax's call is running: a call cancelled before it reached its node has
        # nothing to cancel there, and the test would wait for a cancellation that cannot come.
        await asyncio.wait_for(tax_running.wait(), 20)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, '{"error": "policy_denied", "message": "no permit"}')

    async def scenario() -> None:
        async with aio_nodes({"tax": hanging, "hrss": refusing}) as directory:
            started = time.monotonic()
            with pytest.raises(NodeRefused, match="agency 'hrss'"):
                await directory.encrypt_all(requests_for("tax", "hrss"), deadline_s=25)
            assert time.monotonic() - started < 10
            await asyncio.wait_for(cancelled.wait(), 10)

    asyncio.run(scenario())


def test_bytes_that_are_not_an_answer_are_a_protocol_error() -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        garbage = grpc.unary_unary_rpc_method_handler(
            _garbage, request_deserializer=lambda b: b, response_serializer=lambda b: b
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("xgate.v1.AgencyNode", {"EncryptValues": garbage})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        directory = NodeDirectory({"tax": NodeEndpoint("tax", f"127.0.0.1:{port}")})
        try:
            with pytest.raises(NodeProtocolError, match="agency 'tax'"):
                await directory.encrypt_all(requests_for("tax"), deadline_s=5)
        finally:
            await directory.close()
            await server.stop(None)

    asyncio.run(scenario())


async def _garbage(request: bytes, context: Any) -> bytes:
    return b"\xff\xff\xff\xff not a protobuf message"


def test_an_unreachable_node_is_503_naming_it() -> None:
    async def scenario() -> None:
        directory = NodeDirectory({"tax": NodeEndpoint("tax", "127.0.0.1:1")})
        try:
            with pytest.raises(NodeUnavailable, match="agency 'tax'") as info:
                await directory.encrypt_all(requests_for("tax"), deadline_s=5)
            assert type(info.value) is NodeUnavailable and info.value.http_status == 503
        finally:
            await directory.close()

    asyncio.run(scenario())


def _real_node(**kw: Any) -> tuple[grpc.Server, str]:
    """The node's real gRPC edge (NodeServicer + NodeService) over a fake store."""
    service = NodeService(agency="tax", store=_store(), allow_plaintext_mode=True, **kw)  # type: ignore[arg-type]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    node_pb2_grpc.add_AgencyNodeServicer_to_server(NodeServicer(service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def _rate_limited(request: node_pb2.EncryptRequest) -> None:
    raise BudgetExhausted("rate limit exceeded", retry_after_s=2.2)


def _denied(request: node_pb2.EncryptRequest) -> None:
    raise PolicyDenied("access denied: no permit matched (deny by default)")


@pytest.mark.parametrize(
    ("node_kw", "error", "http", "retry"),
    [
        ({"max_subjects": 2}, NodePayloadTooLarge, 413, None),
        ({"authorize": _rate_limited}, NodeRateLimited, 429, 3),
        ({"authorize": _denied}, NodeRefused, 403, None),
    ],
)
def test_the_nodes_status_reaches_the_gateway_faithfully(
    node_kw: dict[str, Any], error: type[XgateError], http: int, retry: int | None
) -> None:
    server, address = _real_node(**node_kw)

    async def scenario() -> None:
        directory = NodeDirectory({"tax": NodeEndpoint("tax", address)})
        try:
            with pytest.raises(error, match="agency 'tax'") as info:
                await directory.encrypt_all({"tax": _request(elements=[(INCOME, 0)])}, deadline_s=5)
            assert info.value.http_status == http and retry_after(info.value.details) == retry
        finally:
            await directory.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop(None)


def test_the_real_node_edge_answers_a_good_request() -> None:
    server, address = _real_node()

    async def scenario() -> None:
        directory = NodeDirectory({"tax": NodeEndpoint("tax", address)})
        try:
            answers = await directory.encrypt_all({"tax": _request(elements=[(INCOME, 0)])}, deadline_s=5)
            assert list(answers["tax"].elements[0].plain_values) == [0, 500, 1000, 1500, 2000]
            assert len(SUBJECTS) == 5
        finally:
            await directory.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop(None)


def test_a_node_with_another_agencys_certificate_is_a_typed_tls_failure(tmp_path: Path) -> None:
    """gRPC's own handshake (the agency name pin) fails: TlsHandshakeFailed, not a bare 503."""
    from crypto import pki, tls
    from crypto.pki import target_name

    pki.init_ca(tmp_path / "ca", "Test")
    node = pki.issue(tmp_path / "ca", "node", "hrss", tmp_path / "hrss")  # the address answers as hrss
    gw = pki.issue(tmp_path / "ca", "gateway", "gateway", tmp_path / "gw")
    ca, crl = tmp_path / "ca" / pki.CA_CERT, tmp_path / "ca" / pki.CRL
    node_tls = tls.TlsPaths(node.cert_path, node.key_path, ca, crl)
    gw_tls = tls.TlsPaths(gw.cert_path, gw.key_path, ca, crl)

    async def ok(request: node_pb2.EncryptRequest, context: grpc.aio.ServicerContext) -> Any:
        return answer("tax", request)

    async def scenario() -> None:
        server = grpc.aio.server()
        node_pb2_grpc.add_AgencyNodeServicer_to_server(AioNode("hrss", ok), server)
        port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(node_tls))
        await server.start()
        creds = {"tax": (tls.channel_credentials(gw_tls), target_name("tax", "node"))}
        directory = NodeDirectory({"tax": NodeEndpoint("tax", f"127.0.0.1:{port}")}, credentials=creds)
        try:
            with pytest.raises(TlsHandshakeFailed, match="agency 'tax'") as info:
                await directory.encrypt_all(requests_for("tax"), deadline_s=5)
            assert info.value.http_status == 503 and info.value.code == "tls_handshake_failed"
        finally:
            await directory.close()
            await server.stop(None)

    asyncio.run(scenario())


def test_a_node_that_does_not_hold_the_context_gets_its_bytes_once_in_a_resent_request() -> None:
    import json

    context = b"ctx-bytes"
    seen: list[tuple[str, bytes]] = []

    async def node(request: node_pb2.EncryptRequest, context_: grpc.aio.ServicerContext) -> Any:
        seen.append((request.context_fingerprint, request.public_context))
        if not request.public_context:
            body = {"error": "context_unknown", "message": "send its bytes"}
            await context_.abort(grpc.StatusCode.NOT_FOUND, json.dumps(body))
        return answer("tax", request)

    async def scenario() -> None:
        async with aio_nodes({"tax": node}) as directory:
            requests = requests_for("tax")
            requests["tax"].context_fingerprint = "sha256:" + "ab" * 32
            answers = await directory.encrypt_all(requests, deadline_s=5, public_context=context)
            assert answers["tax"].agency == "tax"
            assert requests["tax"].public_context == context  # the request the node answered
            # Without bytes to send, context_unknown is the node's error, named.
            bare = requests_for("tax")
            with pytest.raises(NodeProtocolError, match="tax"):
                await directory.encrypt_all(bare, deadline_s=5)

    asyncio.run(scenario())
    assert seen[:2] == [("sha256:" + "ab" * 32, b""), ("sha256:" + "ab" * 32, context)]
