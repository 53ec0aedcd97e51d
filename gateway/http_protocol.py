"""The gateway's HTTP/1.1 connections: a deadline and a size limit for each request head (uvicorn has neither).

uvicorn times out idle kept-alive connections, and the admission middleware bounds a request's
body, but nothing bounds a request head: a client that sends one header byte every few seconds
holds a connection, a file descriptor and ~60 kB of the process for ever (1,500 such connections:
+92 MB, none closed; found by review). Each connection here gets `header_read_timeout_s` from
its start, or from the end of its previous response, until its request head is complete; then
it is dropped, as is an idle kept-alive connection when uvicorn's keep-alive time runs out:
aborted rather than closed, so it frees its place under `max_connections` at once.

Nor does uvicorn bound a head's size with httptools: one 64 MiB header was answered 200, and
twelve connections sending 40 MiB each took the gateway from 201 to 762 MB (review). A head is
cut at `max_head_bytes`, counted as it arrives (httptools buffers a header until it is whole,
so its own callbacks come too late), with 431 `request_head_too_large`. A request uvicorn finds
malformed is answered in the API's error shape too, with a request id, instead of its plain text.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from xgate.errors import InvalidInput, RequestHeadTooLarge, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.gateway.http")


MAX_HEAD_BYTES = 64 * 1024  # request line and headers; nginx allows 32 kB by default, h11 16 kB
REFUSED_LINGER_S = 2.0  # a refused connection is closed, then aborted if its peer is still there


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the head deadline (`header_read_timeout_s`) and size limit."""

    header_read_timeout_s: float = 10.0
    max_head_bytes: int = MAX_HEAD_BYTES
    _head_timer: asyncio.TimerHandle | None = None
    _awaiting_head = True  # from the connection's start, or the end of the previous request's body
    _head_bytes = 0  # bytes of the head being received, counted as they arrive
    _feed_head_done = False  # within one data_received: a head ended
    _feed_body = 0  # within one data_received: body bytes the parser handed on
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._feed_head_done, self._feed_body = False, 0
        super().data_received(data)
        if self._refused or not self._awaiting_head:
            return
        if self._feed_head_done:  # a head ended in this chunk: what follows a body's end is not known
            self._head_bytes = 0  # to the byte, so the next head may pass the limit by one chunk
            return
        # Bytes of this chunk that were not body: the head being received (and a body's chunk framing).
        self._head_bytes += len(data) - self._feed_body
        if self._head_bytes > self.max_head_bytes:
            log.info("request_head_too_large", limit_bytes=self.max_head_bytes)
            error = RequestHeadTooLarge(f"the request line and headers exceed {self.max_head_bytes} bytes")
            if self.cycle is None or self.cycle.response_complete:
                self._refuse(error)
            else:  # a pipelined head while an answer is being written: no room for a second answer
                self._refused = True
                self._drop()

    def on_headers_complete(self) -> None:
        self._awaiting_head, self._feed_head_done, self._head_bytes = False, True, 0
        self._disarm()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._feed_body += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head, self._head_bytes = True, 0  # the next request's head (pipelined or kept alive)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, in the API's error shape."""
        self._refuse(InvalidInput("the request is not valid HTTP/1.1 (request line, headers or chunked body)"))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is None or self.cycle.response_complete:  # not a pipelined request already started
            self._arm()  # the next request's head, on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_read_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info("request_head_timeout", timeout_s=self.header_read_timeout_s)
            self._drop()

    def timeout_keep_alive_handler(self) -> None:
        """An idle kept-alive connection ends as a late head does (uvicorn closes it gracefully)."""
        if not self.transport.is_closing():
            self._drop()

    def _refuse(self, error: XgateError) -> None:
        """Answer `error` in the API's shape and end the connection (the request never reaches the app)."""
        self._refused = True
        self._disarm()
        request_id = str(uuid.uuid4())
        body = json.dumps({"error": error.code, "message": error.message, "request_id": request_id}).encode()
        status = HTTPStatus(error.http_status)
        head = [f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii")]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head.append(f"content-type: application/json\r\ncontent-length: {len(body)}\r\n".encode("ascii"))
        head.append(f"x-request-id: {request_id}\r\nconnection: close\r\n\r\n".encode("ascii"))
        self.transport.write(b"".join(head) + body)
        self.connections.discard(self)  # its place under `max_connections` is free now
        self.transport.close()  # sends the answer; a peer that never reads it is cut below
        self.loop.call_later(REFUSED_LINGER_S, self.transport.abort)

    def _drop(self) -> None:
        # abort, not close: a TLS close waits up to 30 s for the peer's close_notify, and the
        # connection would keep its place under `max_connections` all that time.
        self.connections.discard(self)
        self.transport.abort()


def protocol_with(header_read_timeout_s: float, max_head_bytes: int = MAX_HEAD_BYTES) -> type[HeadDeadlineProtocol]:
    """The protocol class uvicorn instantiates per connection, with this deadline and head limit."""
    limits = {"header_read_timeout_s": header_read_timeout_s, "max_head_bytes": max_head_bytes}
    return type("GatewayHttpProtocol", (HeadDeadlineProtocol,), limits)
