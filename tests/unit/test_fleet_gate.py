"""The Fleet gate: the pure allowlist (what reaches the SuperLink), header and body rules, and the
ASGI app in front of a mock SuperLink (refusals never reach it; what passes arrives unchanged)."""

from __future__ import annotations

import inspect
import posixpath
import re
from collections.abc import Callable
from urllib.parse import unquote

import httpx
import pytest
from flwr.supercore.routers.runtime.router import router as runtime_router
from flwr.superlink.routers.control.router import router as control_router
from flwr.superlink.routers.fleet.router import router as fleet_router
from flwr.supernode import fleet_http_client, fleet_http_connection
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.fleet_gate import (
    FLEET_ROUTES,
    NOT_FORWARDED_FLEET,
    body_refusal,
    decide,
    end_to_end,
    node_fingerprint,
)
from federated.fleet_gate_server import FleetGate

# -- the allowlist, derived from Flower's own code ----------------------------------------------------


def _paths(router: object) -> dict[str, set[str]]:
    return {r.path: set(r.methods) for r in router.routes}  # type: ignore[attr-defined]


def test_allowlist_is_the_fleet_routes_an_authenticated_supernode_calls() -> None:
    fleet = _paths(fleet_router)
    assert all(methods == {"POST"} for methods in fleet.values())
    called = set(re.findall(r'path="(/v1/fleet/[a-z-]+)"', inspect.getsource(fleet_http_client)))
    assert called == set(fleet)  # the SuperNode's client covers the whole Fleet router
    assert called - NOT_FORWARDED_FLEET == FLEET_ROUTES
    # Register/unregister over the Fleet API happen only for a SuperNode without a key (never ours).
    conn = inspect.getsource(fleet_http_connection)
    assert "self_registered = authentication_keys is None" in conn
    for method in ("RegisterNode", "UnregisterNode"):
        assert all("if self_registered" in conn[: m.start()][-300:] for m in re.finditer(rf"client\.{method}\(", conn))
    other = set(_paths(control_router)) | set(_paths(runtime_router))
    assert other and not FLEET_ROUTES & other


@pytest.mark.parametrize("route", sorted(FLEET_ROUTES))
def test_each_fleet_route_is_forwarded_verbatim(route: str) -> None:
    d = decide("POST", route.encode())
    assert d.forward and d.route == route


@pytest.mark.parametrize(
    "target",
    [
        "/v1/control/list-runs",
        "/v1/control/register-node",
        "/v1/control/start-run",
        "/v1/runtime/acquire-task",
        "/v1/fleet/register-node",  # self-registration: not for SuperNodes with keys
        "/v1/fleet/unregister-node",
        "/health",
        "/docs",
        "/openapi.json",
        "/",
        "",
        "/v1/fleet/",
        "/v1/fleet/../control/list-runs",
        "/v1/fleet/pull-messages/../../control/start-run",
        "//v1/control/list-runs",
        "//v1/fleet/pull-messages",
        "/v1/fleet//pull-messages",
        "/v1/fleet/./pull-messages",
        "/v1/fleet/pull-messages/",
        "/v1/fleetX/pull-messages",
        "/v1/fleetpull-messages",
        "/v1/fleet%2F..%2Fcontrol%2Flist-runs",
        "/v1/fleet/..%2Fcontrol/list-runs",
        "/v1/fleet/%2e%2e/control/list-runs",
        "/v1/fleet/%70ull-messages",  # decodes to an allowed path: still not what a SuperNode sends
        "/v1/fleet/pull-messages%00",
        "/v1/fleet/pull-messages;x",
        "/V1/FLEET/PULL-MESSAGES",
        "https://evil/v1/fleet/pull-messages",
        "*",
    ],
)
def test_everything_else_is_refused(target: str) -> None:
    d = decide("POST", target.encode())
    assert not d.forward and d.status == 404


def test_query_strings_and_other_methods_are_refused() -> None:
    assert decide("POST", b"/v1/fleet/pull-messages?a=1").status == 404
    assert decide("POST", b"/v1/fleet/pull-messages?").status == 404
    assert decide("POST", b"/v1/fleet/pull-messages", b"a=1").status == 404
    for method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "post", "CONNECT"):
        assert decide(method, b"/v1/fleet/pull-messages").status == 405
    assert decide("GET", b"/v1/control/list-runs").status == 404
    assert decide("POST", "/v1/fleet/pull-messagés".encode()).status == 404


_URL_CHARS = st.sampled_from([*"/.%2FfeEcontrl-v1?;#x", "..", "%2e", "%2F", "/v1/", "fleet", "control"])
_TARGETS = st.one_of(
    st.binary(max_size=60),
    st.lists(_URL_CHARS, max_size=12).map(lambda p: "".join(p).encode()),
    st.tuples(
        st.lists(_URL_CHARS, max_size=4), st.sampled_from(sorted(FLEET_ROUTES)), st.lists(_URL_CHARS, max_size=4)
    ).map(lambda t: ("".join(t[0]) + t[1] + "".join(t[2])).encode()),
)


@settings(max_examples=400)
@given(method=st.sampled_from(["POST", "GET", "PUT", "post"]), target=_TARGETS, query=st.binary(max_size=4))
def test_only_exact_fleet_routes_are_ever_forwarded(method: str, target: bytes, query: bytes) -> None:
    d = decide(method, target, query)
    exact = method == "POST" and not query and target.decode("latin-1") in FLEET_ROUTES
    assert d.forward == exact
    if d.forward:
        assert d.route in FLEET_ROUTES and d.route == target.decode()
    # Whatever a server would make of the target (percent-decoding, dot segments), nothing outside
    # the Fleet routes is forwarded.
    decoded = posixpath.normpath(re.sub("/+", "/", "/" + unquote(target.decode("latin-1").partition("?")[0])))
    if not decoded.startswith("/v1/fleet/"):
        assert not d.forward


# -- bodies, headers ------------------------------------------------------------------------------


def test_body_needs_one_declared_length_within_the_limit() -> None:
    assert body_refusal(["10"], False, 10) is None
    assert body_refusal(["0"], False, 10) is None
    assert body_refusal(["11"], False, 10) == (413, "request body over 10 bytes")
    assert body_refusal([], False, 10) == (411, "Content-Length required")
    assert body_refusal(["5"], True, 10) == (411, "Content-Length required")
    for bad in (["-1"], ["1e3"], [" 5"], ["5", "6"], ["0x10"], ["\xb2"], ["\u0661\u0662"], ["\uff15"]):
        assert body_refusal(bad, False, 10) == (400, "invalid Content-Length"), bad
    assert body_refusal(["5", "5"], False, 10) is None  # repeated identical values (RFC 9110 §8.6)


def test_hop_by_hop_headers_are_dropped_and_flower_auth_headers_kept() -> None:
    auth = [(b"flwr-public-key", b"QUJD"), (b"flwr-signature", b"c2ln"), (b"flwr-timestamp", b"2026-01-01T00:00:00")]
    headers = [
        (b"host", b"gw.example.gov:9092"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"x-private", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"te", b"trailers"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"content-type", b"application/protobuf"),
        (b"content-length", b"3"),
        *auth,
    ]
    out = end_to_end(headers, drop=("Host",))
    assert out == [(b"content-type", b"application/protobuf"), (b"content-length", b"3"), *auth]


def test_node_fingerprint_is_a_digest_not_the_key() -> None:
    fp = node_fingerprint("QUJDREVG")
    assert len(fp) == 16 and "QUJD" not in fp and fp == node_fingerprint("QUJDREVG") != node_fingerprint("QUJDREVH")
    assert node_fingerprint(None) == node_fingerprint("") == "-"


# -- the ASGI app in front of a mock SuperLink -----------------------------------------------------------

UPSTREAM = "https://127.0.0.1:1"


def _gate(handler: Callable[[httpx.Request], httpx.Response], max_body: int = 64) -> tuple[httpx.Client, list]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    upstream = httpx.AsyncClient(transport=httpx.MockTransport(record))
    app = FleetGate(UPSTREAM, upstream, max_body=max_body)
    return app, seen


async def _call(app: FleetGate, method: str, path: str, **kw: object) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="https://gw.example.gov:9092") as c:
        return await c.request(method, path, **kw)  # type: ignore[arg-type]


class _Stream(httpx.AsyncByteStream):
    """A response body the gate has to stream (as from a real connection)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for chunk in self.chunks:
            yield chunk


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        401,
        stream=_Stream(b'{"code"', b": 1}"),
        headers=[("flwr-component-version", "1.41.0"), ("connection", "close"), ("x-a", "1"), ("x-a", "2")],
    )


@pytest.mark.anyio
async def test_fleet_call_reaches_the_superlink_unchanged_and_its_answer_comes_back() -> None:
    app, seen = _gate(_ok)
    headers = {
        "content-type": "application/protobuf",
        "flwr-public-key": "QUJD",
        "flwr-signature": "c2ln",
        "flwr-timestamp": "2026-01-01T00:00:00+00:00",
        "connection": "keep-alive, x-private",
        "x-private": "secret-hop",
    }
    res = await _call(app, "POST", "/v1/fleet/pull-messages", content=b"\x08\x01proto", headers=headers)
    assert res.status_code == 401 and res.content == b'{"code": 1}'
    assert res.headers["flwr-component-version"] == "1.41.0" and res.headers.get_list("x-a") == ["1", "2"]
    [up] = seen
    assert str(up.url) == UPSTREAM + "/v1/fleet/pull-messages" and up.method == "POST"
    assert up.content == b"\x08\x01proto" and up.headers["content-length"] == "7"
    for name in ("flwr-public-key", "flwr-signature", "flwr-timestamp", "content-type"):
        assert up.headers[name] == headers[name]
    assert "x-private" not in up.headers and up.headers["host"] == "127.0.0.1:1"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/control/list-runs", 404),
        ("POST", "/v1/control/register-node", 404),
        ("POST", "/v1/runtime/acquire-task", 404),
        ("POST", "//v1/control/list-runs", 404),
        ("POST", "/v1/fleet%2F..%2Fcontrol%2Flist-runs", 404),
        ("POST", "/v1/fleet/register-node", 404),
        ("GET", "/docs", 404),
        ("GET", "/v1/fleet/pull-messages", 405),
        ("POST", "/v1/fleet/pull-messages?x=1", 404),
    ],
)
async def test_refusals_never_reach_the_superlink(method: str, path: str, status: int) -> None:
    app, seen = _gate(_ok)
    res = await _call(app, method, path, content=b"x")
    assert res.status_code == status and seen == []


@pytest.mark.anyio
async def test_bodies_without_length_or_over_the_limit_are_refused() -> None:
    app, seen = _gate(_ok, max_body=16)
    assert (await _call(app, "POST", "/v1/fleet/push-object", content=b"x" * 16)).status_code == 401
    res = await _call(app, "POST", "/v1/fleet/push-object", content=b"x" * 17)
    assert res.status_code == 413 and res.text == "request body over 16 bytes"

    async def chunks():  # type: ignore[no-untyped-def]
        yield b"x"

    assert (await _call(app, "POST", "/v1/fleet/push-object", content=chunks())).status_code == 411
    # A body longer than it declared is cut at the limit while streaming, whatever the header said.
    res = await _call(app, "POST", "/v1/fleet/push-object", content=b"x" * 40, headers={"content-length": "8"})
    assert res.status_code == 413
    assert len(seen) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(("error", "status"), [(httpx.ConnectError("refused"), 502), (httpx.ReadTimeout("slow"), 504)])
async def test_an_unreachable_superlink_is_a_retryable_status(error: Exception, status: int) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    app, _ = _gate(fail)
    res = await _call(app, "POST", "/v1/fleet/send-node-heartbeat", content=b"hb")
    assert res.status_code == status  # Flower's SuperNode retries 502/503/504
