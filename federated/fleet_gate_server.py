"""The Fleet gate process: HTTPS on the SuperLink's public address, forwarding only Fleet API calls.

Run by `federated.remote.RemoteLink` (through `federated.orphan_guard`, in its own process group):
``python -m federated.fleet_gate_server --host H --port P --upstream-port Q --ca CA --cert C --key K``.
It serves TLS with the SuperLink's own certificate and key, so SuperNodes keep verifying the same
certificate against the federation CA; it dials the SuperLink at https://127.0.0.1:Q verifying
that certificate against the CA too. What passes is decided by `federated.fleet_gate.decide`
(everything else is answered here, logged, and never reaches the SuperLink). Bodies are streamed
both ways; a request body must declare its length, stay under `--max-body-bytes` and arrive by a
deadline (`--body-grace-s` plus its length at `--body-min-bytes-per-s`, else 408). Connections per
client address and the time to send a request's headers are bounded by the gate's HTTP protocol
(`federated.fleet_gate_connections`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import uvicorn
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from federated.fleet_gate import DEFAULT_MAX_BODY, body_refusal, decide, end_to_end, node_fingerprint
from federated.fleet_gate_connections import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_PER_ADDRESS,
    ConnectionGuard,
    guarded_h11,
)
from xgate.logging import configure, get_logger

log = get_logger(__name__)
UPSTREAM_HOST = "127.0.0.1"
CONNECTION_EVENTS = frozenset({"/v1/fleet/activate-node", "/v1/fleet/deactivate-node"})
DEFAULT_BODY_GRACE_S = 10.0
DEFAULT_BODY_MIN_RATE = 64 * 1024  # bytes/s: a 5 MiB array chunk in under 90 s on the slowest link
DEFAULT_MAX_CONNECTIONS = 200  # beyond this, 503 (retried by SuperNodes)


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


class FleetGate:
    """ASGI app: refuse what `decide` refuses, stream the rest to `upstream` (no trailing slash)."""

    def __init__(
        self,
        upstream: str,
        client: httpx.AsyncClient,
        max_body: int = DEFAULT_MAX_BODY,
        body_grace_s: float = DEFAULT_BODY_GRACE_S,
        body_min_rate: float = DEFAULT_BODY_MIN_RATE,
    ) -> None:
        self.upstream, self.client, self.max_body = upstream, client, max_body
        self.body_grace_s, self.body_min_rate = body_grace_s, body_min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        target = scope.get("raw_path") or scope["path"].encode()
        peer = scope["client"][0] if scope.get("client") else "-"
        decision = decide(request.method, target, scope.get("query_string", b""))
        if decision.route is None:
            await self._refuse(scope, receive, send, target, peer, decision.status, decision.reason)
            return
        lengths = request.headers.getlist("content-length")
        refusal = body_refusal(lengths, "transfer-encoding" in request.headers, self.max_body)
        if refusal is not None:
            await self._refuse(scope, receive, send, target, peer, *refusal)
            return
        upstream = self.client.build_request(
            "POST",
            self.upstream + decision.route,
            headers=end_to_end(scope["headers"], drop=("host",)),
            content=self._body(request, int(lengths[0])),
        )
        try:
            response = await self.client.send(upstream, stream=True)
        except _BodyTooLarge:
            await self._refuse(scope, receive, send, target, peer, 413, f"request body over {self.max_body} bytes")
            return
        except _BodyTooSlow:
            await self._refuse(scope, receive, send, target, peer, 408, "request body not received in time")
            return
        except ClientDisconnect:
            log.info("fleet_gate_client_gone", route=decision.route, client=peer)
            return
        except httpx.TimeoutException as exc:
            await self._upstream_error(scope, receive, send, decision.route, peer, 504, exc)
            return
        except httpx.TransportError as exc:
            await self._upstream_error(scope, receive, send, decision.route, peer, 502, exc)
            return
        level = log.info if decision.route in CONNECTION_EVENTS else log.debug
        level(
            "fleet_gate_forwarded",
            route=decision.route,
            status=response.status_code,
            client=peer,
            node=node_fingerprint(request.headers.get("flwr-public-key")),
            bytes_in=int(lengths[0]),
        )
        out = StreamingResponse(
            self._relay(decision.route, response),
            status_code=response.status_code,
            background=BackgroundTask(response.aclose),
        )
        out.raw_headers = end_to_end(response.headers.raw)  # as the SuperLink sent them, minus hop-by-hop
        await out(scope, receive, send)

    def _relay(self, route: str, response: httpx.Response) -> AsyncIterator[bytes]:
        """The SuperLink's answer, streamed back as it arrives."""
        return response.aiter_raw()

    async def _body(self, request: Request, length: int) -> AsyncIterator[bytes]:
        """The request body as it arrives, whole by the deadline its declared length sets."""
        seen = 0
        deadline = asyncio.get_running_loop().time() + self.body_grace_s + length / self.body_min_rate
        chunks = aiter(request.stream())
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # around the read only, never across a yield
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _BodyTooSlow from None
            seen += len(chunk)
            if seen > self.max_body:  # the server enforces Content-Length; this bounds it regardless
                raise _BodyTooLarge
            yield chunk

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, target: bytes, peer: str, status: int, reason: str
    ) -> None:
        shown = target.decode("latin-1")[:200]
        log.warning("fleet_gate_refused", method=scope["method"], path=shown, client=peer, status=status, reason=reason)
        await PlainTextResponse(reason, status_code=status)(scope, receive, send)

    async def _upstream_error(
        self, scope: Scope, receive: Receive, send: Send, route: str, peer: str, status: int, exc: Exception
    ) -> None:
        # 502/504 are what a SuperNode retries (Flower's HTTP retry invoker), like an absent SuperLink.
        log.warning("fleet_gate_upstream_error", route=route, client=peer, status=status, error=type(exc).__name__)
        await PlainTextResponse("SuperLink unavailable", status_code=status)(scope, receive, send)


def upstream_client(ca_cert: Path, timeout_s: float = 60.0) -> httpx.AsyncClient:
    """HTTPS to the local SuperLink, its certificate checked against the CA (SAN 127.0.0.1)."""
    return httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=str(ca_cert)),
        trust_env=False,  # no proxy from the environment between the gate and the SuperLink
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s, connect=5.0, pool=10.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


def gate_config(args: argparse.Namespace) -> uvicorn.Config:
    upstream = f"https://{UPSTREAM_HOST}:{args.upstream_port}"
    app = FleetGate(
        upstream, upstream_client(args.ca, args.timeout_s), args.max_body_bytes, args.body_grace_s, args.body_min_rate
    )
    guard = ConnectionGuard(args.max_connections_per_address, args.header_timeout_s)
    return uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=str(args.cert),
        ssl_keyfile=str(args.key),
        http=guarded_h11(guard),
        ws="none",
        lifespan="on",
        proxy_headers=False,  # the peer address is the TCP peer's, whatever a header claims
        server_header=False,
        date_header=False,  # the SuperLink's own Date passes through; two would be invalid
        access_log=False,  # the gate logs each decision itself
        log_config=None,
        limit_concurrency=args.max_connections,  # beyond this, 503 (retried by SuperNodes)
        timeout_keep_alive=15,
        timeout_graceful_shutdown=2,  # stopping must stay well inside Federation's 10 s before SIGKILL
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fleet_gate_server", description=__doc__)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--ca", type=Path, required=True)
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY)
    p.add_argument("--timeout-s", type=float, default=60.0)
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    p.add_argument("--max-connections-per-address", type=int, default=DEFAULT_PER_ADDRESS, help="0: no limit")
    p.add_argument("--header-timeout-s", type=float, default=DEFAULT_HEADER_TIMEOUT_S, help="0: no deadline")
    p.add_argument("--body-grace-s", type=float, default=DEFAULT_BODY_GRACE_S)
    p.add_argument("--body-min-bytes-per-s", dest="body_min_rate", type=float, default=DEFAULT_BODY_MIN_RATE)
    args = p.parse_args(argv)
    for name, value, least in (
        ("--max-connections", args.max_connections, 1),
        ("--max-connections-per-address", args.max_connections_per_address, 0),
        ("--header-timeout-s", args.header_timeout_s, 0),
        ("--body-grace-s", args.body_grace_s, 0),
    ):
        if value < least:
            p.error(f"{name} must be at least {least}, not {value}")
    if not args.body_min_rate > 0:
        p.error(f"--body-min-bytes-per-s must be above 0, not {args.body_min_rate}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    configure("fleet-gate")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one unstructured line per call otherwise
    args = parse_args(argv)
    log.info(
        "fleet_gate_started",
        listen=f"{args.host}:{args.port}",
        upstream=f"{UPSTREAM_HOST}:{args.upstream_port}",
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
        per_address=args.max_connections_per_address,
        header_timeout_s=args.header_timeout_s,
        body_min_bytes_per_s=args.body_min_rate,
    )
    uvicorn.Server(gate_config(args)).run()
    log.info("fleet_gate_stopped", listen=f"{args.host}:{args.port}")


if __name__ == "__main__":
    main()
