"""The whole error tree in one table: class -> public code, HTTP status, gRPC status.

Also: every error class of the project lives in xgate/errors.py, the module docstring draws every
class with its statuses, a node's gRPC status reaches the REST caller faithfully (413 stays 413,
429 stays 429 with Retry-After), and the one text match left (gRPC's TLS handshake failure) is
decided in one function with a case per text gRPC writes.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

import xgate.errors as errors
from xgate.errors import XgateError, all_error_classes, http_status_of, retry_after_seconds
from xgate.grpc_edge import is_tls_handshake_failure, node_error_from_rpc

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("xgate", "app", "client", "exchange", "gateway", "nodes", "federated", "policies", "audit", "crypto")

TABLE: dict[str, tuple[str, int, str]] = {
    "XgateError": ("internal_error", 500, "INTERNAL"),
    "InvalidInput": ("invalid_input", 400, "INVALID_ARGUMENT"),
    "PayloadTooLarge": ("payload_too_large", 413, "RESOURCE_EXHAUSTED"),
    "RequestHeadTooLarge": ("request_head_too_large", 431, "RESOURCE_EXHAUSTED"),
    "UnsupportedMediaType": ("unsupported_media_type", 415, "INVALID_ARGUMENT"),
    "WitnessConflict": ("witness_conflict", 409, "FAILED_PRECONDITION"),
    "ConfigError": ("config_error", 500, "FAILED_PRECONDITION"),
    "NotFound": ("not_found", 404, "NOT_FOUND"),
    "ContextUnknown": ("context_unknown", 404, "NOT_FOUND"),
    "PadUnknown": ("pad_unknown", 404, "NOT_FOUND"),
    "Unauthenticated": ("unauthenticated", 401, "UNAUTHENTICATED"),
    "PolicyDenied": ("policy_denied", 403, "PERMISSION_DENIED"),
    "BudgetExhausted": ("budget_exhausted", 429, "RESOURCE_EXHAUSTED"),
    "CryptoError": ("crypto_error", 400, "INVALID_ARGUMENT"),
    "EnvelopeRejected": ("crypto_error", 401, "UNAUTHENTICATED"),
    "IntegrityError": ("integrity_error", 409, "DATA_LOSS"),
    "AuditUnavailable": ("audit_unavailable", 503, "UNAVAILABLE"),
    "AuditLogCompromised": ("audit_log_compromised", 503, "UNAVAILABLE"),
    "AuditUnconfigured": ("audit_unconfigured", 503, "UNAVAILABLE"),
    "StoreUnavailable": ("store_unavailable", 503, "UNAVAILABLE"),
    "ComputeUnavailable": ("compute_unavailable", 503, "UNAVAILABLE"),
    "TrainingBusy": ("training_busy", 409, "RESOURCE_EXHAUSTED"),
    "JobExists": ("job_exists", 409, "ALREADY_EXISTS"),
    "TrainingUnavailable": ("training_unavailable", 503, "UNAVAILABLE"),
    "GatewayError": ("gateway_error", 502, "UNKNOWN"),
    "NodeError": ("node_error", 502, "UNAVAILABLE"),
    "NodeUnavailable": ("node_unavailable", 503, "UNAVAILABLE"),
    "TlsHandshakeFailed": ("tls_handshake_failed", 503, "UNAVAILABLE"),
    "VerticalFailed": ("node_unavailable", 503, "UNAVAILABLE"),
    "JobFailed": ("node_unavailable", 503, "UNAVAILABLE"),
    "NodeTimeout": ("node_timeout", 504, "DEADLINE_EXCEEDED"),
    "NodeProtocolError": ("node_bad_response", 502, "UNAVAILABLE"),
    "NodePadLost": ("node_pad_lost", 502, "UNAVAILABLE"),
    "NodeRefused": ("node_refused", 403, "PERMISSION_DENIED"),
    "NodePayloadTooLarge": ("node_payload_too_large", 413, "RESOURCE_EXHAUSTED"),
    "NodeRateLimited": ("node_rate_limited", 429, "RESOURCE_EXHAUSTED"),
    "Overloaded": ("overloaded", 503, "UNAVAILABLE"),
    "IdempotencyInProgress": ("idempotency_in_progress", 409, "ABORTED"),
    "IdempotencyKeyInvalid": ("invalid_idempotency_key", 400, "INVALID_ARGUMENT"),
    "IdempotencyKeyReused": ("idempotency_key_reused", 422, "INVALID_ARGUMENT"),
    "DeadlineExceeded": ("deadline_exceeded", 504, "DEADLINE_EXCEEDED"),
    "RequestTimeout": ("request_timeout", 408, "DEADLINE_EXCEEDED"),
    "RequestCancelled": ("cancelled", 499, "CANCELLED"),
}


def test_the_table_is_the_whole_tree() -> None:
    classes = {cls.__name__: cls for cls in all_error_classes()}
    assert sorted(classes) == sorted(TABLE), "a class was added or removed: give it a row here"
    for name, (code, http, grpc_name) in TABLE.items():
        cls = classes[name]
        assert (cls.code, cls.http_status, cls.grpc_status) == (code, http, grpc_name), name
        assert hasattr(grpc.StatusCode, cls.grpc_status), f"{name}: {cls.grpc_status} is no gRPC status"
        assert 400 <= cls.http_status <= 599


def test_the_docstring_draws_every_class_with_its_statuses() -> None:
    lines = (errors.__doc__ or "").splitlines()
    for name, (code, http, grpc_name) in TABLE.items():
        drawn = [line for line in lines if f" {name} " in f" {line.replace('─', ' ')} "]
        assert drawn, f"{name} is not drawn in xgate/errors.py's docstring"
        assert code in drawn[0] and str(http) in drawn[0] and grpc_name in drawn[0], drawn[0]


def test_no_error_class_lives_outside_xgate_errors() -> None:
    """Scans the source: a class deriving from any class of the tree must be in xgate/errors.py."""
    names = set(TABLE)
    outside = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "xgate" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                    if bases & names:
                        outside.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert outside == []


def test_moved_classes_stay_importable_where_they_were_used() -> None:
    from audit import AuditUnavailable, WitnessConflict
    from client.sdk import GatewayError
    from federated.horizontal_server import JobFailed
    from gateway.training_service import JobExists, TrainingBusy, TrainingUnavailable

    for cls in (AuditUnavailable, WitnessConflict, GatewayError, JobFailed, JobExists, TrainingBusy):
        assert cls.__module__ == "xgate.errors"
    assert TrainingUnavailable is errors.TrainingUnavailable


def test_gateway_error_carries_the_gateway_answer() -> None:
    exc = errors.GatewayError(429, {"error": "budget_exhausted", "message": "later", "details": {"retry_after_s": 3}})
    assert (exc.http_status, exc.code, exc.message, exc.details) == (
        429,
        "budget_exhausted",
        "later",
        {"retry_after_s": 3},
    )


def test_job_failed_names_the_federation() -> None:
    exc = errors.JobFailed("needs 2 nodes")
    assert exc.agency == "federation" and exc.message == "agency 'federation': needs 2 nodes"


def test_http_status_of_a_public_code() -> None:
    assert http_status_of("budget_exhausted") == 429
    assert http_status_of("payload_too_large") == 413
    assert http_status_of("no_such_code") is None


@pytest.mark.parametrize(
    ("details", "header"),
    [
        ({"retry_after_s": 0.2}, 1),
        ({"retry_after_s": 0}, 1),
        ({"retry_after_s": 1.0}, 1),
        ({"retry_after_s": 1.01}, 2),
        ({"retry_after_s": 25 * 86400}, 25 * 86400),
        ({"retry_after_s": math.nan}, 1),
        ({"retry_after_s": "soon"}, 1),
        ({}, None),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(details: dict[str, Any], header: int | None) -> None:
    assert retry_after_seconds(details) == header


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _node_abort(exc: XgateError) -> FakeRpcError:
    """What xgate.grpc_edge.call_guarded sends when a node's handler raises `exc`."""
    return FakeRpcError(getattr(grpc.StatusCode, exc.grpc_status), json.dumps(exc.to_public()))


@pytest.mark.parametrize(
    ("rpc", "cls", "http"),
    [
        (_node_abort(errors.PayloadTooLarge("200001 subjects exceed this node's limit 100000")),
         errors.NodePayloadTooLarge, 413),
        (FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "Stream removed (CLIENT: Received message larger than max (5008 vs. 100))"),
         errors.NodePayloadTooLarge, 413),
        (_node_abort(errors.BudgetExhausted("rate limit exceeded", retry_after_s=2.5)), errors.NodeRateLimited, 429),
        (_node_abort(errors.PolicyDenied("access denied: no permit")), errors.NodeRefused, 403),
        (_node_abort(errors.EnvelopeRejected("stale envelope")), errors.NodeRefused, 403),
        (_node_abort(errors.InvalidInput("request names no subjects")), errors.NodeProtocolError, 502),
        (_node_abort(errors.ConfigError("store unreadable")), errors.NodeProtocolError, 502),
        (_node_abort(errors.IntegrityError("stored values of 'hrss.months' fall outside the declared range")),
         errors.NodeProtocolError, 502),
        (FakeRpcError(grpc.StatusCode.INTERNAL, '{"error": "internal_error", "message": "internal error"}'),
         errors.NodeProtocolError, 502),
        (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), errors.NodeTimeout, 504),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: "
                      "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"),
         errors.NodeUnavailable, 503),
        (FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: "
                      "ipv4:127.0.0.1:34011: Custom verification check failed with error: UNAUTHENTICATED: "
                      "Hostname Verification Check failed."),
         errors.TlsHandshakeFailed, 503),
        (FakeRpcError(grpc.StatusCode.UNKNOWN, ""), errors.NodeProtocolError, 502),
    ],
)  # fmt: skip
def test_node_status_reaches_the_caller_faithfully(rpc: FakeRpcError, cls: type[XgateError], http: int) -> None:
    mapped = node_error_from_rpc("tax", rpc)
    assert type(mapped) is cls
    assert mapped.http_status == http
    assert mapped.agency == "tax" and "agency 'tax'" in mapped.message


def test_node_429_keeps_its_retry_after_and_a_missing_one_becomes_one_second() -> None:
    mapped = node_error_from_rpc("tax", _node_abort(errors.BudgetExhausted("busy", retry_after_s=2.5)))
    assert retry_after_seconds(mapped.details) == 3
    bare = node_error_from_rpc("tax", FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, '{"error": "budget_exhausted", '
                                                   '"message": "busy"}'))  # fmt: skip
    assert type(bare) is errors.NodeRateLimited and retry_after_seconds(bare.details) == 1


@pytest.mark.parametrize(
    ("details", "tls"),
    [
        # The texts gRPC core writes (recorded from grpcio 1.7x/1.8x on loopback).
        ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:34011: Custom verification "
         "check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.", True),
        ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Ssl handshake failed "
         "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
         "CERTIFICATE_VERIFY_FAILED", True),
        ("Handshake failed with error SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:"
         "WRONG_VERSION_NUMBER", True),
        ("connections to all backends failing; last error: UNKNOWN: TSI_PROTOCOL_FAILURE", True),
        ("error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED", True),
        # Not a handshake failure: nothing listening, a peer that hung up, a node's own abort.
        ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to "
         "remote host: Connection refused", False),
        ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:34011: Socket closed", False),
        ('{"error": "node_unavailable", "message": "store closed"}', False),
        ("", False),
    ],
)  # fmt: skip
def test_tls_handshake_failure_is_told_apart_in_one_place(details: str, tls: bool) -> None:
    assert is_tls_handshake_failure(grpc.StatusCode.UNAVAILABLE, details) is tls
    # Only an UNAVAILABLE call can be a failed handshake.
    assert is_tls_handshake_failure(grpc.StatusCode.INVALID_ARGUMENT, details) is False


def test_the_rest_edge_answers_with_the_node_status_and_retry_after() -> None:
    """Through the gateway's FastAPI error handler: 413 stays 413, 429 stays 429 with Retry-After."""
    from fastapi import FastAPI

    from gateway.app import create_app
    from gateway.services import Services

    raised: list[XgateError] = []

    class Failing:
        async def run(self, principal: Any, request: Any, request_id: str | None = None, answered: Any = None) -> Any:
            raise raised[-1]

    app: FastAPI = create_app(Services(authenticate=_principal, coordinator=_FakeCoordinator(Failing())))  # type: ignore[arg-type]
    body = {
        "program": "dibao",
        "purpose": "eligibility",
        "legal_basis": "reg:1",
        "case_id": "c1",
        "mode": "plaintext",
        "pseudonyms": ["a" * 26],
    }
    client = TestClient(app)
    cases = [
        (errors.NodeRateLimited("tax", "busy, retry later", retry_after_s=0.3), 429, "1"),
        (errors.NodeRateLimited("tax", "busy, retry later", retry_after_s=7.2), 429, "8"),
        (errors.NodePayloadTooLarge("tax", "refused the size"), 413, None),
        (errors.NodeRefused("tax", "refused: no permit"), 403, None),
        (errors.TlsHandshakeFailed("tax", "TLS handshake failed"), 503, None),
    ]
    for exc, status, retry in cases:
        raised.append(exc)
        answer = client.post("/v1/checks", json=body)
        assert answer.status_code == status, answer.text
        assert answer.headers.get("Retry-After") == retry
        assert answer.json()["error"] == exc.code and "tax" in answer.json()["message"]


def _principal(request: Any) -> Any:
    from xgate.principal import Principal

    return Principal(user="u1", agency="civil_affairs", role="caseworker", tier="gold")


class _FakeCoordinator:
    def __init__(self, inner: Any) -> None:
        self.service = inner
        self.nodes = None
        self.programs = None
