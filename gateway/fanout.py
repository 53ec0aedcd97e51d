"""Concurrent fan-out to agency nodes over gRPC, all-or-nothing, with deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

import grpc

from crypto.envelope import Envelopes
from protos.xgate.v1 import node_pb2, node_pb2_grpc
from xgate import metrics
from xgate.errors import CryptoError, NodeError, NodePadLost, NodeProtocolError, NodeUnavailable, XgateError
from xgate.grpc_edge import is_context_unknown, is_not_found, node_error_from_rpc
from xgate.logging import get_logger

log = get_logger("xgate.gateway.fanout")

# (first, longest) wait in ms before the channel dials a node that refused it again.
RECONNECT_BACKOFF_MS = (250, 1000)


@dataclass(frozen=True)
class NodeEndpoint:
    agency: str
    address: str


class NodeDirectory:
    """Long-lived channels to every node (one HTTP/2 connection each, reused across checks)."""

    def __init__(
        self,
        endpoints: Mapping[str, NodeEndpoint],
        max_message_mb: int = 64,
        credentials: Mapping[str, tuple[grpc.ChannelCredentials, str]] | None = None,
        envelopes: Envelopes | None = None,
        server_check: Callable[[str, str], None] | None = None,
        recheck_s: float = 60.0,
        renewed: Callable[[], Mapping[str, tuple[grpc.ChannelCredentials, str]] | None] | None = None,
    ) -> None:
        self._endpoints = dict(endpoints)
        # Called before connecting: new credentials after our certificate was renewed, else None.
        self._renewed = renewed
        self._retired: list[grpc.aio.Channel] = []
        self._envelopes = envelopes
        # gRPC hides the server's certificate from clients, so revocation (and the agency it
        # names) is checked by a separate TLS pre-flight, on first use and then periodically.
        self._server_check = server_check
        self._recheck_s = recheck_s
        self._checked: dict[str, float] = {}
        self._limit = max_message_mb * 1024 * 1024
        self._credentials = dict(credentials or {})
        self._stubs: dict[str, node_pb2_grpc.AgencyNodeStub] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._down_since: dict[str, float] = {}  # agency -> when its failures began (service log, metrics)

    def _failed(self, agency: str, exc: XgateError) -> None:
        """Service log + metrics for a failed node call: each failure counted, the first one logged
        as `node_failed` with its reason (gRPC status text, errno and text for OS errors)."""
        metrics.NODE_ERRORS.labels(agency, exc.code).inc()
        metrics.NODE_UP.labels(agency).set(0)
        if agency not in self._down_since:
            self._down_since[agency] = time.monotonic()
            log.warning("node_failed", agency=agency, error=exc.code, reason=exc.message)

    def _succeeded(self, agency: str) -> None:
        metrics.NODE_UP.labels(agency).set(1)
        since = self._down_since.pop(agency, None)
        if since is not None:
            log.info("node_recovered", agency=agency, down_s=round(time.monotonic() - since, 1))

    def _connect(self, agency: str) -> node_pb2_grpc.AgencyNodeStub:
        # grpc.aio channels bind to the running event loop, so they are made on first use.
        endpoint = self._endpoints[agency]
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", self._limit),
            ("grpc.max_send_message_length", self._limit),
            # gRPC's default reconnect backoff grows to 120 s: a node restarted after a few failed
            # calls would stay "unreachable" long after it is back. Agencies are few, so retrying
            # their address every second at most costs nothing.
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
        ]
        if agency in self._credentials:
            creds, target_name = self._credentials[agency]
            options.append(("grpc.ssl_target_name_override", target_name))
            channel = grpc.aio.secure_channel(endpoint.address, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(endpoint.address, options=options)
        self._channels.append(channel)
        self._stubs[agency] = node_pb2_grpc.AgencyNodeStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped
        return self._stubs[agency]

    def agencies(self) -> list[str]:
        return sorted(self._endpoints)

    def stub(self, agency: str) -> node_pb2_grpc.AgencyNodeStub:
        if agency not in self._endpoints:
            raise NodeUnavailable(agency, "no node is registered for this agency")
        self._maybe_renew()
        return self._stubs.get(agency) or self._connect(agency)

    def _maybe_renew(self) -> None:
        """After `xgate pki install` renewed our certificate: new channels with it from now on; calls in
        flight finish on the old channels, which are closed with the directory."""
        fresh = self._renewed() if self._renewed is not None else None
        if fresh is None:
            return
        self._credentials = dict(fresh)
        self._retired += self._channels
        self._channels = []
        self._stubs.clear()
        log.info("node_channels_renewed", agencies=len(self._credentials))

    async def _verify_server(self, agency: str) -> None:
        if agency not in self._endpoints:
            raise NodeUnavailable(agency, "no node is registered for this agency (no [nodes] entry)")
        if self._server_check is None or time.monotonic() - self._checked.get(agency, -1e9) < self._recheck_s:
            return
        try:
            await asyncio.to_thread(self._server_check, self._endpoints[agency].address, agency)
        except NodeError:  # unreachable, or TlsHandshakeFailed: typed by the pre-flight itself
            self._checked.pop(agency, None)
            raise
        except XgateError as exc:
            self._checked.pop(agency, None)
            raise NodeProtocolError(agency, f"presented an unacceptable certificate: {exc.message}") from None
        self._checked[agency] = time.monotonic()

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in [*self._channels, *self._retired]))
        self._channels.clear()
        self._retired.clear()
        self._stubs.clear()

    async def encrypt_all(
        self,
        requests: MutableMapping[str, node_pb2.EncryptRequest],
        deadline_s: float,
        public_context: bytes = b"",
    ) -> dict[str, node_pb2.EncryptResponse]:
        """Call every node concurrently; the first failure cancels the rest and is raised.

        A request naming its HE context by fingerprint alone goes out without the context's bytes;
        a node that does not hold them (first use, evicted, restarted) answers `context_unknown`
        and gets the request once more with `public_context` attached. `requests[agency]` is then
        replaced by the request that node answered (what was sent, for byte counts and receipts)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_s

        async def one(agency: str, request: node_pb2.EncryptRequest) -> tuple[str, node_pb2.EncryptResponse]:
            await self._verify_server(agency)
            stub = self.stub(agency)
            while True:
                digest = self._envelopes.sign_request(request, "EncryptValues") if self._envelopes else b""
                try:
                    response = await stub.EncryptValues(request, timeout=max(0.001, until - loop.time()))
                except grpc.aio.AioRpcError as exc:
                    if public_context and not request.public_context and is_context_unknown(exc):
                        request = _with_context(request, public_context)
                        requests[agency] = request
                        log.info("context_sent", agency=agency, context=request.context_fingerprint)
                        continue
                    if is_not_found(exc, "pad_unknown"):
                        raise NodePadLost(agency, "no longer holds the check's pad batch") from None
                    raise node_error_from_rpc(agency, exc) from None
                break
            if not isinstance(response, node_pb2.EncryptResponse):
                # grpc.aio hands back None when the bytes do not parse as the response message.
                raise NodeProtocolError(agency, "answered with bytes that are not an EncryptResponse")
            if self._envelopes is not None:
                try:
                    self._envelopes.verify_response(response, "EncryptValues", digest, agency=agency)
                except CryptoError as exc:
                    raise NodeProtocolError(agency, f"response envelope refused: {exc.message}") from None
            return agency, response

        async def observed(agency: str, request: node_pb2.EncryptRequest) -> tuple[str, node_pb2.EncryptResponse]:
            try:
                answer = await one(agency, request)
            except NodePadLost:
                raise  # the node is up (it answered): it only forgot a pad batch, and the check retries
            except NodeError as exc:
                self._failed(agency, exc)
                raise
            self._succeeded(agency)
            return answer

        tasks = [asyncio.ensure_future(observed(a, r)) for a, r in requests.items()]
        try:
            results = await asyncio.gather(*tasks)
        except NodeError:
            for task in tasks:
                task.cancel()
            raise
        return dict(results)

    async def cosign(
        self,
        agency: str,
        note: bytes,
        proof: list[bytes],
        old_size: int,
        deadline_s: float = 10.0,
        *,
        state_only: bool = False,
    ) -> node_pb2.CosignResponse:
        """Ask a node to witness a checkpoint (signed envelope both ways, like every call); with
        ``state_only``, only what it last cosigned (size, root, its cosignature line)."""
        await self._verify_server(agency)
        request = node_pb2.CosignRequest(
            checkpoint=note, consistency_proof=proof, old_size=old_size, state_only=state_only
        )
        digest = self._envelopes.sign_request(request, "CosignCheckpoint") if self._envelopes else b""
        try:
            response = await self.stub(agency).CosignCheckpoint(request, timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            raise node_error_from_rpc(agency, exc) from None
        if not isinstance(response, node_pb2.CosignResponse) or response.agency != agency:
            raise NodeProtocolError(agency, "answered the cosign request with something else")
        if self._envelopes is not None:
            try:
                self._envelopes.verify_response(response, "CosignCheckpoint", digest, agency=agency)
            except CryptoError as exc:
                raise NodeProtocolError(agency, f"cosign envelope refused: {exc.message}") from None
        return response

    async def health(self, agency: str, deadline_s: float = 2.0) -> node_pb2.HealthResponse:
        try:
            response: node_pb2.HealthResponse = await self.stub(agency).Health(
                node_pb2.HealthRequest(), timeout=deadline_s
            )
        except grpc.aio.AioRpcError as exc:
            error = node_error_from_rpc(agency, exc)
            self._failed(agency, error)
            raise error from None
        self._succeeded(agency)
        return response

    async def describe(self, agency: str, deadline_s: float = 2.0) -> node_pb2.DescribeResponse:
        try:
            described: node_pb2.DescribeResponse = await self.stub(agency).Describe(
                node_pb2.DescribeRequest(), timeout=deadline_s
            )
            return described
        except grpc.aio.AioRpcError as exc:
            raise node_error_from_rpc(agency, exc) from None


def _with_context(request: node_pb2.EncryptRequest, public_context: bytes) -> node_pb2.EncryptRequest:
    """The same request with the context's bytes attached (signed afresh when sent)."""
    fresh = node_pb2.EncryptRequest()
    fresh.CopyFrom(request)
    fresh.ClearField("envelope")
    fresh.public_context = public_context
    return fresh
