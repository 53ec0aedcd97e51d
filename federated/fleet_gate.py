"""What the Fleet gate lets through to the SuperLink: the pure decisions, no I/O.

Flower 1.41 serves its Fleet API (`/v1/fleet/...`, what SuperNodes call), its Control API
(`/v1/control/...`: `flwr run`, `flwr supernode register`, ... unauthenticated in the open-source
build) and its Runtime API (`/v1/runtime/...`) on one HTTPS port. In remote mode the SuperLink
binds 127.0.0.1 and the routable address is served by the gate (`federated/fleet_gate_server.py`),
which forwards a request only when `decide` names one of `FLEET_ROUTES`, verbatim.

The allowlist is the Fleet router's routes (`flwr/superlink/routers/fleet/router.py`, all POST)
that an authenticated SuperNode calls (`flwr/supernode/fleet_http_connection.py`). Left out:
`/v1/fleet/register-node` and `/v1/fleet/unregister-node`, which a SuperNode calls only when it
has no authentication key (self-registration; the SuperLink refuses them under
`--enable-supernode-auth` anyway), and `/health` (no SuperNode calls it).

Matching is exact on the raw request target (percent-encoding and dot segments untouched, no
query string, POST only), and the forwarded path is the allowlist's own constant, so nothing a
client sends can shape the path the SuperLink sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FLEET_PREFIX = "/v1/fleet/"
FLEET_ROUTES: frozenset[str] = frozenset(
    FLEET_PREFIX + name
    for name in (
        "activate-node",
        "deactivate-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)
# Fleet routes an authenticated SuperNode never calls (self-registration without a key).
NOT_FORWARDED_FLEET = frozenset({FLEET_PREFIX + "register-node", FLEET_PREFIX + "unregister-node"})
METHOD = "POST"  # every Fleet route

# Connection-specific headers (RFC 9110 §7.6.1) and what the HTTP client sets for its own hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # one Flower object: arrays come in 5 MiB chunks, config records do not


@dataclass(frozen=True)
class Decision:
    """`route` set: forward to exactly that path. Otherwise answer `status` with `reason`."""

    route: str | None
    status: int
    reason: str

    @property
    def forward(self) -> bool:
        return self.route is not None


def decide(method: str, target: bytes, query: bytes = b"") -> Decision:
    """Forward only `POST <one of FLEET_ROUTES>` without a query, compared byte for byte.

    `target` is the request path as received (ASGI `raw_path`; anything after `?` counts as query).
    """
    path, sep, rest = target.partition(b"?")
    try:
        text = path.decode("ascii")
    except UnicodeDecodeError:
        return Decision(None, 404, "not a Fleet API path")
    if text not in FLEET_ROUTES:
        return Decision(None, 404, "not a Fleet API path")
    if sep or rest or query:
        return Decision(None, 404, "the Fleet API takes no query string")
    if method != METHOD:
        return Decision(None, 405, "the Fleet API takes POST only")
    return Decision(text, 200, "fleet")


def body_refusal(content_length: Sequence[str], chunked: bool, limit: int) -> tuple[int, str] | None:
    """(status, reason) when a request body must not be forwarded, None when it may.

    SuperNodes always send one Content-Length (httpx with a serialised protobuf), so a body without
    one is refused before anything is read, and one over `limit` too."""
    if chunked or not content_length:
        return 411, "Content-Length required"
    # ASCII digits only: str.isdigit() also accepts '²' or Arabic-Indic digits, which int() refuses.
    if len(set(content_length)) != 1 or not (content_length[0].isascii() and content_length[0].isdigit()):
        return 400, "invalid Content-Length"
    if int(content_length[0]) > limit:
        return 413, f"request body over {limit} bytes"
    return None


def end_to_end(headers: Iterable[tuple[bytes, bytes]], *, drop: Iterable[str] = ()) -> list[tuple[bytes, bytes]]:
    """Headers minus hop-by-hop ones, those the Connection header names, and `drop` (lower case).

    Everything else passes unchanged, including Flower's SuperNode authentication headers
    (`flwr-public-key`, `flwr-signature`, `flwr-timestamp`) and its version headers."""
    items = list(headers)
    named = {
        token.strip().lower()
        for name, value in items
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    skip = HOP_BY_HOP | named | {d.lower() for d in drop}
    return [(n, v) for n, v in items if n.decode("latin-1").lower() not in skip]


def node_fingerprint(claimed_public_key: str | None) -> str:
    """16 hex digits of SHA-256 of the public key a request claims (`flwr-public-key`), for logs:
    which node called from which address, without the key itself."""
    if not claimed_public_key:
        return "-"
    return hashlib.sha256(claimed_public_key.encode("latin-1")).hexdigest()[:16]
