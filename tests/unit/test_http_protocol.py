"""The gateway's HTTP protocol (gateway/http_protocol.py) fed bytes directly, as asyncio would: the
head-size limit counts head bytes only, never a body that arrives in the same read (a review found
100 kB POSTs in one read answered 431 after they had run, and the next request on the connection
refused after 6 kB)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.http_protocol import protocol_with


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8443), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _echo_length(scope: Any, receive: Any, send: Any) -> None:
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


def _post(size: int) -> bytes:
    head = f"POST /v1/checks HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    return head.encode() + b" " * size


async def _serve(*reads: bytes) -> bytes:
    config = Config(_echo_length, lifespan="off", log_level="warning")
    config.load()
    protocol = protocol_with(10.0, 64 * 1024)(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    for data in reads:
        protocol.data_received(data)
        for _ in range(20):  # let the app answer before the next read, as a client waiting would
            await asyncio.sleep(0)
    protocol.connection_lost(None)
    return bytes(transport.written)


@pytest.mark.parametrize("size", [100_000, 250_000])
def test_a_large_body_in_the_same_read_as_its_head_is_not_counted_as_head(size: int) -> None:
    answered = asyncio.run(
        _serve(_post(size), b"GET /healthz HTTP/1.1\r\nHost: gw\r\n" + b"X-A: b\r\n" * 700 + b"\r\n")
    )
    assert answered.count(b"HTTP/1.1 200") == 2 and b"431" not in answered, answered[:400]
    assert f"\r\n\r\n{size}".encode() in answered


def test_a_head_past_the_limit_is_refused_however_it_is_cut() -> None:
    huge = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Junk: " + b"a" * 70_000
    for reads in ([huge], [huge[:30_000], huge[30_000:]], [_post(10), huge]):
        answered = asyncio.run(_serve(*reads))
        assert b"HTTP/1.1 431" in answered and b"request_head_too_large" in answered, (len(reads), answered[:300])
