"""The gateway's HTTP/1.1 connections: a deadline for each request head (uvicorn has none).

uvicorn times out idle kept-alive connections, and the admission middleware bounds a request's
body, but nothing bounds a request head: a client that sends one header byte every few seconds
holds a connection, a file descriptor and ~60 kB of the process for ever (1,500 such connections:
+92 MB, none closed; found by review). Each connection here gets `header_read_timeout_s` from
its start, or from the end of its previous response, until its request head is complete; then
it is dropped, as is an idle kept-alive connection when uvicorn's keep-alive time runs out:
aborted rather than closed, so it frees its place under `max_connections` at once.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from xgate.logging import get_logger

log = get_logger("xgate.gateway.http")


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the head deadline (`header_read_timeout_s`)."""

    header_read_timeout_s: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
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

    def _drop(self) -> None:
        # abort, not close: a TLS close waits up to 30 s for the peer's close_notify, and the
        # connection would keep its place under `max_connections` all that time.
        self.connections.discard(self)
        self.transport.abort()


def protocol_with(header_read_timeout_s: float) -> type[HeadDeadlineProtocol]:
    """The protocol class uvicorn instantiates per connection, with this deadline."""
    return type("GatewayHttpProtocol", (HeadDeadlineProtocol,), {"header_read_timeout_s": header_read_timeout_s})
