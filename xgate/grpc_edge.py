"""Mapping between the error hierarchy and gRPC status codes (both directions).

A node aborts with its error's gRPC status and the error's public JSON body
(`call_guarded`); the gateway turns that back into the NodeError subclass whose HTTP status is
the node's own (`node_error_from_rpc`): the node's 413 stays 413, its 429 stays 429 (with
Retry-After), its refusals are 403. The JSON body's `error` code is structured data; only a
failed TLS handshake has nothing but gRPC's free text to go on, and that one decision lives in
`is_tls_handshake_failure` (tests/unit/test_error_tree.py has a case per text).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from xgate.errors import (
    InvalidInput,
    NodeError,
    NodePayloadTooLarge,
    NodeProtocolError,
    NodeRateLimited,
    NodeRefused,
    NodeTimeout,
    NodeUnavailable,
    TlsHandshakeFailed,
    XgateError,
    http_status_of,
)
from xgate.logging import get_logger

log = get_logger("xgate.grpc")
T = TypeVar("T")


def call_guarded(context: grpc.ServicerContext, method: str, handler: Callable[[], T]) -> T:
    """Run a servicer body; XgateError -> its gRPC status, anything else -> INTERNAL (no details)."""
    try:
        return handler()
    except XgateError as exc:
        log.info("rpc_refused", method=method, error=exc.code, reason=exc.message)
        context.abort(getattr(grpc.StatusCode, exc.grpc_status), json.dumps(exc.to_public()))
    except Exception:
        log.exception("rpc_failed", method=method)
        context.abort(grpc.StatusCode.INTERNAL, json.dumps({"error": "internal_error", "message": "internal error"}))
    raise AssertionError("unreachable")  # context.abort raises


# What gRPC core writes when the channel's TLS handshake fails on the client side (grpc gives no
# structured status for it: UNAVAILABLE plus text). Lower-case fragments, matched case-insensitively.
_TLS_FAILURE_TEXT = (
    "handshake failed",  # "Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: ..."
    "ssl_error",  # OpenSSL/BoringSSL error names
    "certificate_verify_failed",  # the server's chain does not lead to the federation CA
    "verification check failed",  # "Hostname Verification Check failed" (the agency pin)
    "tsi_",  # gRPC's transport security interface status names
)


def is_tls_handshake_failure(code: grpc.StatusCode, details: str) -> bool:
    """Whether a failed call's status says the TLS handshake failed (the one text match we keep)."""
    if code != grpc.StatusCode.UNAVAILABLE or not details:
        return False
    text = details.lower()
    return any(fragment in text for fragment in _TLS_FAILURE_TEXT)


def is_not_found(exc: grpc.RpcError, error: str) -> bool:
    """A node answered NOT_FOUND with this public error code (`context_unknown`: it does not hold
    the check's HE context; `pad_unknown`: nor the check's one-time pad batch)."""
    code = exc.code() if hasattr(exc, "code") else None
    if code != grpc.StatusCode.NOT_FOUND:
        return False
    try:
        return bool(json.loads(exc.details() or "").get("error") == error)
    except (TypeError, ValueError, AttributeError):
        return False


def is_context_unknown(exc: grpc.RpcError) -> bool:
    return is_not_found(exc, "context_unknown")


def node_error_from_rpc(agency: str, exc: grpc.RpcError) -> NodeError:
    """Translate a failed fan-out call into a NodeError naming the agency, keeping the node's status."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    detail: Any = exc.details() if hasattr(exc, "details") else ""
    extra: dict[str, Any] = {}
    public_code = ""
    try:
        body = json.loads(detail)
        message = body["message"]
        public_code = str(body.get("error", ""))
        extra = {k: v for k, v in dict(body.get("details", {})).items() if k != "agency"}
    except (TypeError, ValueError, KeyError, AttributeError):
        message = str(detail)[:200] if detail else code.name.lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return NodeTimeout(agency, "did not answer before the deadline")
    if code == grpc.StatusCode.UNAVAILABLE:
        if not public_code and is_tls_handshake_failure(code, str(detail or "")):
            return TlsHandshakeFailed(agency, f"TLS handshake failed ({message})")
        return NodeUnavailable(agency, f"unreachable ({message})", **extra)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return NodeRefused(agency, f"refused: {message}", **extra)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # The node's public code names its class in the tree: a 429 there means "later", not "smaller".
        if http_status_of(public_code) == 429:
            extra.setdefault("retry_after_s", 1)
            return NodeRateLimited(agency, f"busy, retry later: {message}", **extra)
        # payload_too_large from the node, or gRPC's own message-size limit on either side.
        return NodePayloadTooLarge(agency, f"refused the size: {message}", **extra)
    if code == grpc.StatusCode.DATA_LOSS:  # the node's own stored data failed a check (IntegrityError)
        return NodeProtocolError(agency, f"its stored data failed a check: {message}", **extra)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return NodeProtocolError(agency, f"rejected the request: {message}", **extra)
    return NodeProtocolError(agency, f"failed ({code.name.lower()}): {message}", **extra)


__all__ = ["InvalidInput", "call_guarded", "node_error_from_rpc"]
