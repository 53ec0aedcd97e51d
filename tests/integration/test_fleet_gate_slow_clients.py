"""Crowding and slow clients at the Fleet gate (THREAT_MODEL F10), against the real gate process.

Anyone who reaches the gate's port can open TLS connections (a SuperNode proves its key inside
Flower's headers, later). The attacks: hold every connection slot by sending request headers
slowly from one address, or send a body slowly. The gate here has no SuperLink behind it, so a
request that gets through is answered 502 ("SuperLink unavailable"): the legitimate caller below
only needs *an* answer, which it gets at once while the attacker's connections are refused or
cut; without the protections (positive control) the same attack leaves it a 503.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from crypto import pki
from federated.deployment import free_port

pytestmark = pytest.mark.integration
ATTACKER = "127.0.0.2"  # loopback has the whole 127/8: one address for the attacker, 127.0.0.1 for the rest
SLOTS = 12  # the gate's connection limit here (200 by default)
PER_ADDRESS = 4
HEADER_TIMEOUT_S = 2.0
PARTIAL_HEADERS = b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@dataclass
class Gate:
    port: int
    ca: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def legit_call(self) -> int:
        """A caller from another address: the status it gets (502 = through the gate, no SuperLink)."""
        with httpx.Client(verify=self.tls(), timeout=10) as http:
            res = http.post(f"https://127.0.0.1:{self.port}/v1/fleet/pull-messages", content=b"\x00")
            return res.status_code

    def slow_connection(self, source: str = ATTACKER) -> ssl.SSLSocket:
        """A TLS connection from `source` that sends part of a request's headers, then nothing."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0))
        conn = self.tls().wrap_socket(raw, server_hostname="127.0.0.1")
        conn.sendall(PARTIAL_HEADERS)
        return conn


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("gate")
    pki.init_ca(root / "ca", "test federation CA")
    issued = pki.issue(root / "ca", "flower-superlink", "gateway", root / "link", days=1)  # SAN 127.0.0.1
    return root / "ca" / pki.CA_CERT, issued.cert_path, issued.key_path


@contextmanager
def sink(pki_dir: tuple[Path, Path, Path]) -> Iterator[int]:
    """A TLS server with the SuperLink's certificate that reads whatever it is sent and never
    answers: a SuperLink the gate can stream a body to."""
    _, cert, key = pki_dir
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def drain(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), tls.wrap_socket(conn, server_side=True) as c:
            while not stop.is_set() and c.recv(65536):
                pass

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = server.accept()
                conn.settimeout(30)
                threading.Thread(target=drain, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


@contextmanager
def gate(pki_dir: tuple[Path, Path, Path], tmp: Path, *extra: str, upstream: int | None = None) -> Iterator[Gate]:
    ca, cert, key = pki_dir
    port, nowhere = free_port(), upstream or free_port()  # by default nothing listens upstream
    log = tmp / f"gate-{port}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "federated.fleet_gate_server", "--host", "127.0.0.1", "--port", str(port),
             "--upstream-port", str(nowhere), "--ca", str(ca), "--cert", str(cert), "--key", str(key),
             "--max-connections", str(SLOTS), *extra],
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the gate did not start"
                time.sleep(0.1)
        yield Gate(port, ca, proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _closed_by_peer(conn: ssl.SSLSocket, within_s: float) -> float | None:
    """Seconds until the gate closed `conn` (None if it is still open after `within_s`)."""
    start = time.monotonic()
    conn.settimeout(within_s)
    try:
        data = conn.recv(1024)
    except TimeoutError:
        return None
    except (ssl.SSLError, ConnectionError):
        return time.monotonic() - start
    assert data == b"", data  # no answer to an incomplete request: just the close
    return time.monotonic() - start


def test_one_address_holding_connections_with_slow_headers_keeps_nobody_out(pki_dir, tmp_path) -> None:
    with gate(pki_dir, tmp_path, "--max-connections-per-address", str(PER_ADDRESS),
              "--header-timeout-s", str(HEADER_TIMEOUT_S)) as g, ExitStack() as held:  # fmt: skip
        held_conns = [held.enter_context(g.slow_connection()) for _ in range(PER_ADDRESS)]
        extra = [held.enter_context(g.slow_connection()) for _ in range(SLOTS)]  # the attacker asks for every slot
        assert all(_closed_by_peer(c, within_s=1.0) is not None for c in extra)  # refused at once
        assert g.legit_call() == 502  # served: it went through to the (absent) SuperLink
        # The slow ones are cut once their headers are late, long before any keep-alive or TLS timeout.
        waited = [_closed_by_peer(c, within_s=HEADER_TIMEOUT_S + 3) for c in held_conns]
        assert all(w is not None for w in waited), waited
    text = g.log.read_text()
    assert text.count("too many connections from this address") >= SLOTS
    assert text.count("request headers not received in time") >= PER_ADDRESS
    assert ATTACKER in text


def test_positive_control_without_the_limits_slow_headers_take_every_slot(pki_dir, tmp_path) -> None:
    unlimited = ("--max-connections-per-address", "0", "--header-timeout-s", "0")
    with gate(pki_dir, tmp_path, *unlimited) as g, ExitStack() as held:
        conns = [held.enter_context(g.slow_connection()) for _ in range(SLOTS)]
        assert g.legit_call() == 503  # uvicorn's connection limit: everyone else is turned away
        # Held past the deadline the protected gate sets (the first and the last: each wait is a wait).
        assert _closed_by_peer(conns[0], within_s=HEADER_TIMEOUT_S + 1) is None
        assert _closed_by_peer(conns[-1], within_s=0.5) is None


def test_a_body_sent_too_slowly_is_refused_with_408(pki_dir, tmp_path) -> None:
    """Declared 2,000 bytes at a required 1,000 bytes/s after a 1 s grace: due within 3 s."""
    with (
        sink(pki_dir) as superlink,
        gate(pki_dir, tmp_path, "--body-grace-s", "1", "--body-min-bytes-per-s", "1000", upstream=superlink) as g,
    ):
        conn = g.slow_connection("127.0.0.1")
        with conn:
            conn.sendall(b"Content-Type: application/protobuf\r\nContent-Length: 2000\r\n\r\n" + b"\x00" * 10)
            start = time.monotonic()
            conn.settimeout(10)
            answer = conn.recv(4096)
            took = time.monotonic() - start
            while b"\r\n\r\n" in answer and len(answer.split(b"\r\n\r\n", 1)[1]) < 33 and (more := conn.recv(4096)):
                answer += more  # the status line and the reason may come in two records
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request body not received in time" in answer and 2.0 < took < 6.0, took
    assert "request body not received in time" in g.log.read_text()
