"""Crowding and slow clients at the Fleet gate: connections per address, a deadline for headers.

The gate's port is open to every agency host, and to anyone who can reach it: TLS needs no client
certificate (a SuperNode proves its key in Flower's own headers). uvicorn serves at most
`limit_concurrency` connections and, on its own, waits for a request's headers without end, so a
client trickling headers on a few hundred connections would keep every SuperNode out. The gate's
HTTP protocol (`guarded_h11`) therefore
  * closes a connection at once when its address already holds `per_address` of them, and
  * closes one whose request headers are not complete `header_timeout_s` after it opened (or after
    the previous answer on a kept-alive connection, plus uvicorn's keep-alive time), and one idle
    past the keep-alive time, aborting rather than closing (a TLS close waits up to 30 s for the
    peer, and the connection keeps its slot and its count all that time).
The body has its own deadline in the gate itself (`FleetGate`, 408). What is left: a client with
many addresses; a TLS handshake held open up to asyncio's 60 s handshake timeout.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from uvicorn.protocols.http.h11_impl import H11Protocol

from xgate.logging import get_logger

log = get_logger(__name__)

DEFAULT_PER_ADDRESS = 32  # a SuperNode's HTTP client keeps a handful; a NAT of several agency hosts more
DEFAULT_HEADER_TIMEOUT_S = 10.0


class ConnectionGuard:
    """Open connections per client address, shared by one server's connections (one event loop)."""

    def __init__(self, per_address: int = DEFAULT_PER_ADDRESS, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S):
        self.per_address = per_address  # 0: no limit
        self.header_timeout_s = header_timeout_s  # 0: no deadline
        self._open: Counter[str] = Counter()

    def admit(self, address: str) -> bool:
        if self.per_address and self._open[address] >= self.per_address:
            return False
        self._open[address] += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def open_from(self, address: str) -> int:
        return self._open[address]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a `ConnectionGuard`'s limits (one guard per server: `guarded_h11`)."""

    guard: ConnectionGuard
    _admitted: str | None = None
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else "-"
        if not self.guard.admit(address):
            log.warning(
                "fleet_gate_refused",
                client=address,
                reason="too many connections from this address",
                limit=self.guard.per_address,
            )
            self._drop()  # before a byte of it is read
            return
        self._admitted = address
        self._await_headers(self.guard.header_timeout_s)

    def _await_headers(self, timeout_s: float) -> None:
        self._cancel_header_timer()
        if self.guard.header_timeout_s > 0:
            self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        log.warning(
            "fleet_gate_refused",
            client=self._admitted,
            reason="request headers not received in time",
            timeout_s=self.guard.header_timeout_s,
        )
        self._drop()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():  # idle past uvicorn's keep-alive: dropped as above
            self._drop()

    def _drop(self) -> None:
        # abort, not close: a TLS close waits up to 30 s for the peer's close_notify, and the
        # connection would keep its slot in uvicorn's limit all that time.
        self.connections.discard(self)
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not None and not self.cycle.response_complete:
            self._cancel_header_timer()  # a request's headers are in: the body has the gate's deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # kept alive: the next request's headers, in time
            self._await_headers(self.timeout_keep_alive + self.guard.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._admitted is not None:
            self.guard.release(self._admitted)
            self._admitted = None
        super().connection_lost(exc)


def guarded_h11(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, sharing `guard` (`uvicorn.Config(http=...)`)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
