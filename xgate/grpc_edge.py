"""Mapping between the error hierarchy and gRPC status codes (both directions)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from xgate.errors import (
    InvalidInput,
    NodeError,
    NodeProtocolError,
    NodeRefused,
    NodeTimeout,
    NodeUnavailable,
    XgateError,
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


def node_error_from_rpc(agency: str, exc: grpc.RpcError) -> NodeError:
    """Translate a failed fan-out call into a NodeError naming the agency."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    detail: Any = exc.details() if hasattr(exc, "details") else ""
    extra: dict[str, Any] = {}
    try:
        body = json.loads(detail)
        message = body["message"]
        extra = {k: v for k, v in dict(body.get("details", {})).items() if k != "agency"}
    except (TypeError, ValueError, KeyError, AttributeError):
        message = str(detail)[:200] if detail else code.name.lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return NodeTimeout(agency, "did not answer before the deadline")
    if code == grpc.StatusCode.UNAVAILABLE:
        return NodeUnavailable(agency, f"unreachable ({message})")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return NodeRefused(agency, f"refused: {message}", **extra)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return NodeRefused(agency, f"refused: {message}", **extra)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return NodeProtocolError(agency, f"rejected the request: {message}", **extra)
    return NodeProtocolError(agency, f"failed ({code.name.lower()}): {message}", **extra)


__all__ = ["InvalidInput", "call_guarded", "node_error_from_rpc"]
