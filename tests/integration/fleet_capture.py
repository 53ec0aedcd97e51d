"""What crosses the Fleet API, kept for inspection (THREAT_MODEL F4).

`capturing_gate` runs a second Fleet gate (the production `FleetGate`, with the SuperLink's own
certificate, so SuperNodes verify it as they verify the real one) in front of the real gate, in a
thread of the test process. It forwards exactly as the real gate does and keeps every body, both
ways: each SuperNode's requests (its pushed messages and Flower objects, whose arrays travel as
plain `.npy` bytes inside `ArrayChunk` objects) and the SuperLink's answers.

`findings` then looks for needles in what was kept: values as the bytes they would be on the wire
if a node sent them (little-endian ints and floats, decimal text) and identifiers as text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import numpy as np
import uvicorn
from flwr.proto import recorddict_pb2
from starlette.requests import Request

from crypto.flower_keys import FlowerSecurity
from federated.deployment import free_port
from federated.fleet_gate_server import FleetGate, upstream_client


@dataclass(frozen=True)
class Body:
    direction: str  # "up": a SuperNode's request; "down": the SuperLink's answer
    route: str
    data: bytes


class CapturingGate(FleetGate):
    """The production gate, keeping a copy of every body it streams."""

    def __init__(self, upstream: str, client: httpx.AsyncClient) -> None:
        super().__init__(upstream, client)
        self._lock = threading.Lock()
        self._bodies: list[Body] = []

    @property
    def bodies(self) -> list[Body]:
        with self._lock:
            return list(self._bodies)

    def _keep(self, direction: str, route: str, chunks: list[bytes]) -> None:
        with self._lock:
            self._bodies.append(Body(direction, route, b"".join(chunks)))

    async def _body(self, request: Request, length: int) -> AsyncIterator[bytes]:
        chunks: list[bytes] = []
        async for chunk in super()._body(request, length):
            chunks.append(chunk)
            yield chunk
        self._keep("up", request.url.path, chunks)

    def _relay(self, route: str, response: httpx.Response) -> AsyncIterator[bytes]:
        async def tee() -> AsyncIterator[bytes]:
            chunks: list[bytes] = []
            async for chunk in super(CapturingGate, self)._relay(route, response):
                chunks.append(chunk)
                yield chunk
            self._keep("down", route, chunks)

        return tee()


@contextmanager
def capturing_gate(upstream_port: int, security: FlowerSecurity) -> Iterator[tuple[int, CapturingGate]]:
    """A capturing gate on a free loopback port in front of the gate at `upstream_port`."""
    port = free_port()
    gate = CapturingGate(f"https://127.0.0.1:{upstream_port}", upstream_client(security.ca_cert))
    config = uvicorn.Config(
        gate,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(security.superlink_cert),
        ssl_keyfile=str(security.superlink_key),
        http="h11",
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)  # in a thread: uvicorn installs no signal handlers there
    thread = threading.Thread(target=server.run, name="fleet-capture", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the capturing gate did not start"
        time.sleep(0.05)
    try:
        yield port, gate
    finally:
        server.should_exit = True
        thread.join(15)


def value_needles(name: str, values: Iterable[float]) -> dict[str, bytes]:
    """Each value as a node would put it on the wire: int64/int32 where it is whole, float64,
    float32, and its decimal text (numbers inside JSON or a config record)."""
    out: dict[str, bytes] = {}
    for i, v in enumerate(values):
        tag = f"{name}[{i}]"
        if float(v).is_integer():
            out[f"{tag} int64"] = np.int64(v).tobytes()
            out[f"{tag} int32"] = np.int32(v).tobytes()
            out[f"{tag} text"] = str(int(v)).encode()
        out[f"{tag} float64"] = np.float64(v).tobytes()
        out[f"{tag} float32"] = np.float32(v).tobytes()
    return out


def run_needles(name: str, values: np.ndarray) -> dict[str, bytes]:
    """The values in a row, as one array of each dtype would hold them (float16 is caught here:
    two bytes alone would match by chance); whole values also as a Flower config record's int
    list (packed varints) and as the text of a list."""
    dtypes = ["<i8", "<i4", "<f8", "<f4"] + (["<f2"] if np.abs(values).max() <= np.finfo(np.float16).max else [])
    out = {f"{name} run {dt}": values.astype(dt).tobytes() for dt in dtypes}
    if np.all(values == np.round(values)):
        ints = [int(v) for v in values]
        out[f"{name} run sint list"] = _packed(recorddict_pb2.SintList(vals=ints).SerializeToString())
        if min(ints) >= 0:
            out[f"{name} run uint list"] = _packed(recorddict_pb2.UintList(vals=ints).SerializeToString())
        out[f"{name} run text"] = ", ".join(map(str, ints[:32])).encode()
    return out


def _packed(message: bytes) -> bytes:
    """The packed values of a one-field list message: past its tag byte and length varint."""
    i = 1
    while message[i] & 0x80:
        i += 1
    return message[i + 1 :]


def text_needles(name: str, texts: Iterable[str]) -> dict[str, bytes]:
    return {f"{name} {t}": t.encode() for t in texts}


def findings(bodies: Iterable[Body] | Iterable[bytes], needles: Mapping[str, bytes]) -> list[str]:
    """The names of the needles found in any body."""
    blobs = [b.data if isinstance(b, Body) else b for b in bodies]
    return sorted(name for name, needle in needles.items() if any(needle in blob for blob in blobs))
