"""One error hierarchy for all of xgate: every error class xgate raises on purpose lives here.

Pure modules raise these; the edges (FastAPI routes, gRPC servicers, CLI) map them to HTTP
status codes, gRPC status codes and exit codes via the class attributes, so the mapping lives in
exactly one place (tests/unit/test_error_tree.py holds the whole table). Messages are public:
they must never carry another agency's values, national ids or key material — name the field,
the agency or the rule instead.

The tree, with (public code, HTTP status, gRPC status):

    XgateError                 internal_error        500  INTERNAL
    ├── InvalidInput           invalid_input         400  INVALID_ARGUMENT
    │   ├── PayloadTooLarge    payload_too_large     413  RESOURCE_EXHAUSTED
    │   ├── RequestHeadTooLarge request_head_too_large 431 RESOURCE_EXHAUSTED  (request line and headers)
    │   ├── UnsupportedMediaType unsupported_media_type 415 INVALID_ARGUMENT  (a body not sent as plain JSON)
    │   ├── WitnessConflict    witness_conflict      409  FAILED_PRECONDITION
    │   ├── IdempotencyKeyInvalid invalid_idempotency_key 400 INVALID_ARGUMENT
    │   ├── IdempotencyKeyReused idempotency_key_reused 422 INVALID_ARGUMENT  (same key, another body)
    │   └── RequestTimeout     request_timeout       408  DEADLINE_EXCEEDED   (body not received in time)
    ├── ConfigError            config_error          500  FAILED_PRECONDITION
    ├── NotFound               not_found             404  NOT_FOUND
    │   ├── ContextUnknown     context_unknown       404  NOT_FOUND    (register the HE context: POST /v1/contexts)
    │   └── PadUnknown         pad_unknown           404  NOT_FOUND    (node: no such pad batch; the gateway opens one)
    ├── Unauthenticated        unauthenticated       401  UNAUTHENTICATED
    ├── PolicyDenied           policy_denied         403  PERMISSION_DENIED
    │   └── BudgetExhausted    budget_exhausted      429  RESOURCE_EXHAUSTED  (+ Retry-After)
    ├── CryptoError            crypto_error          400  INVALID_ARGUMENT
    │   └── EnvelopeRejected   crypto_error          401  UNAUTHENTICATED
    ├── IntegrityError         integrity_error       409  DATA_LOSS
    ├── AuditUnavailable       audit_unavailable     503  UNAVAILABLE
    │   └── AuditLogCompromised audit_log_compromised 503 UNAVAILABLE  (details.reason: truncated|forked|...)
    ├── StoreUnavailable       store_unavailable     503  UNAVAILABLE  (shared-state database away)
    ├── ComputeUnavailable     compute_unavailable   503  UNAVAILABLE  (an HE worker process stopped)
    ├── AuditUnconfigured      audit_unconfigured    503  UNAVAILABLE
    ├── TrainingBusy           training_busy         409  RESOURCE_EXHAUSTED  (+ Retry-After)
    ├── JobExists              job_exists            409  ALREADY_EXISTS
    ├── TrainingUnavailable    training_unavailable  503  UNAVAILABLE
    ├── Overloaded             overloaded            503  UNAVAILABLE  (+ Retry-After)
    ├── IdempotencyInProgress  idempotency_in_progress 409 ABORTED    (+ Retry-After; same key still running)
    ├── DeadlineExceeded       deadline_exceeded     504  DEADLINE_EXCEEDED
    ├── RequestCancelled       cancelled             499  CANCELLED    (the caller went away)
    ├── GatewayError           gateway_error         502  UNKNOWN    client side: an instance carries
    │                                                                the gateway's own code and status
    └── NodeError              node_error            502  UNAVAILABLE         (names the agency)
        ├── NodeUnavailable    node_unavailable      503  UNAVAILABLE
        │   ├── TlsHandshakeFailed tls_handshake_failed 503 UNAVAILABLE
        │   ├── VerticalFailed node_unavailable      503  UNAVAILABLE
        │   └── JobFailed      node_unavailable      503  UNAVAILABLE         (agency 'federation')
        ├── NodeTimeout        node_timeout          504  DEADLINE_EXCEEDED
        ├── NodeProtocolError  node_bad_response     502  UNAVAILABLE
        │   └── NodePadLost    node_pad_lost         502  UNAVAILABLE  (its pad batch is gone: retried once)
        ├── NodeRefused        node_refused          403  PERMISSION_DENIED
        ├── NodePayloadTooLarge node_payload_too_large 413 RESOURCE_EXHAUSTED
        └── NodeRateLimited    node_rate_limited     429  RESOURCE_EXHAUSTED  (+ Retry-After)

A node's answer reaches the REST caller faithfully (xgate/grpc_edge.node_error_from_rpc): its
413 stays a 413, its 429 stays a 429 with Retry-After (whole seconds, rounded up, at least 1).
"""

from __future__ import annotations

import math
from typing import Any


class XgateError(Exception):
    """Base of every error xgate raises on purpose."""

    code = "internal_error"
    http_status = 500
    grpc_status = "INTERNAL"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (the gateway's HE workers): rebuilt from their state, since
        # subclasses' constructors take other arguments than Exception.args.
        return (_restore, (type(self), self.message, self.__dict__.copy()))

    def to_public(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


def _restore(cls: type[XgateError], message: str, state: dict[str, Any]) -> XgateError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidInput(XgateError):
    """A request, file or message is malformed or violates a declared constraint."""

    code = "invalid_input"
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"
    http_status = 413
    grpc_status = "RESOURCE_EXHAUSTED"


class RequestHeadTooLarge(InvalidInput):
    """A request's line and headers exceed the gateway's limit (answered by its HTTP protocol)."""

    code = "request_head_too_large"
    http_status = 431
    grpc_status = "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(InvalidInput):
    """A request body sent as something else than uncompressed `application/json`."""

    code = "unsupported_media_type"
    http_status = 415
    grpc_status = "INVALID_ARGUMENT"


class WitnessConflict(InvalidInput):
    """The caller's proof starts from a size the witness has not cosigned; retry from details.witness_size."""

    code = "witness_conflict"
    http_status = 409
    grpc_status = "FAILED_PRECONDITION"


class IdempotencyKeyInvalid(InvalidInput):
    """The Idempotency-Key header is not 1..255 printable ASCII characters."""

    code = "invalid_idempotency_key"
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"


class IdempotencyKeyReused(InvalidInput):
    """The caller's idempotency key already named a request with another body."""

    code = "idempotency_key_reused"
    http_status = 422
    grpc_status = "INVALID_ARGUMENT"


class ConfigError(XgateError):
    """A configuration, program, mapping or policy file cannot be used."""

    code = "config_error"
    http_status = 500
    grpc_status = "FAILED_PRECONDITION"


class NotFound(XgateError):
    code = "not_found"
    http_status = 404
    grpc_status = "NOT_FOUND"


class ContextUnknown(NotFound):
    """A check names an HE context fingerprint the gateway (or a node) does not hold: register it
    (POST /v1/contexts) or, between gateway and node, send its bytes."""

    code = "context_unknown"
    http_status = 404
    grpc_status = "NOT_FOUND"


class PadUnknown(NotFound):
    """A node does not hold the one-time pad batch a check names (restarted, or evicted): the gateway
    opens a new batch instead."""

    code = "pad_unknown"
    http_status = 404
    grpc_status = "NOT_FOUND"


class Unauthenticated(XgateError):
    code = "unauthenticated"
    http_status = 401
    grpc_status = "UNAUTHENTICATED"


class PolicyDenied(XgateError):
    """A policy decision point said no (deny by default, fail closed)."""

    code = "policy_denied"
    http_status = 403
    grpc_status = "PERMISSION_DENIED"


class BudgetExhausted(PolicyDenied):
    """A probing, rate or privacy budget is used up; details say when it resets."""

    code = "budget_exhausted"
    http_status = 429
    grpc_status = "RESOURCE_EXHAUSTED"


class CryptoError(XgateError):
    """A ciphertext, context, signature or key failed validation or verification."""

    code = "crypto_error"
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"


class EnvelopeRejected(CryptoError):
    """A signed envelope failed verification (signature, key, freshness, replay, binding): the
    message is not authenticated, so gRPC UNAUTHENTICATED / HTTP 401 rather than a bad argument."""

    http_status = 401
    grpc_status = "UNAUTHENTICATED"


class IntegrityError(XgateError):
    """Stored or received evidence (audit log, proof, checkpoint) does not verify, or a node's own
    stored data fails a check (a value outside its declared range, a sealed value that does not open)."""

    code = "integrity_error"
    http_status = 409
    grpc_status = "DATA_LOSS"


class AuditUnavailable(XgateError):
    """The audit write failed; the action it records must fail too (fail closed)."""

    code = "audit_unavailable"
    http_status = 503
    grpc_status = "UNAVAILABLE"


class AuditLogCompromised(AuditUnavailable):
    """The gateway's audit log disagrees with what was signed or witnessed (truncated, forked, re-signed
    with another key): the gateway signs nothing more and refuses the actions it would have to record."""

    code = "audit_log_compromised"
    http_status = 503
    grpc_status = "UNAVAILABLE"


class StoreUnavailable(XgateError):
    """The gateway's shared-state database (SQLite file or PostgreSQL) cannot be reached: refuse, retry later."""

    code = "store_unavailable"
    http_status = 503
    grpc_status = "UNAVAILABLE"


class ComputeUnavailable(XgateError):
    """A gateway HE worker process stopped while holding a check (killed, out of memory): retry later."""

    code = "compute_unavailable"
    http_status = 503
    grpc_status = "UNAVAILABLE"


class AuditUnconfigured(XgateError):
    """An audit read was asked of a gateway that keeps no audit log."""

    code = "audit_unconfigured"
    http_status = 503
    grpc_status = "UNAVAILABLE"


class TrainingBusy(XgateError):
    """A training job is already running (one at a time); details.retry_after_s says when to retry."""

    code = "training_busy"
    http_status = 409
    grpc_status = "RESOURCE_EXHAUSTED"


class JobExists(XgateError):
    code = "job_exists"
    http_status = 409
    grpc_status = "ALREADY_EXISTS"


class TrainingUnavailable(XgateError):
    code = "training_unavailable"
    http_status = 503
    grpc_status = "UNAVAILABLE"


class GatewayError(XgateError):
    """Client side: an error the gateway answered, carrying its HTTP status and public body."""

    code = "gateway_error"
    http_status = 502
    grpc_status = "UNKNOWN"

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message", f"HTTP {status}")), **body.get("details", {}))
        self.code = str(body.get("error", "gateway_error"))
        self.http_status = status


class NodeError(XgateError):
    """A data node could not serve a fan-out call; always names the agency."""

    code = "node_error"
    http_status = 502
    grpc_status = "UNAVAILABLE"

    def __init__(self, agency: str, message: str, **details: Any) -> None:
        super().__init__(f"agency '{agency}': {message}", agency=agency, **details)
        self.agency = agency


class NodeUnavailable(NodeError):
    code = "node_unavailable"
    http_status = 503


class NodeTimeout(NodeError):
    code = "node_timeout"
    http_status = 504
    grpc_status = "DEADLINE_EXCEEDED"


class NodeProtocolError(NodeError):
    """The node answered, but with something malformed or unverifiable."""

    code = "node_bad_response"
    http_status = 502


class NodePadLost(NodeProtocolError):
    """The node no longer holds the pad batch the gateway used (it restarted): the check service
    opens a new batch and asks once more."""

    code = "node_pad_lost"


class NodeRefused(NodeError):
    """The node's own policy decision point refused (the provider decides)."""

    code = "node_refused"
    http_status = 403
    grpc_status = "PERMISSION_DENIED"


class NodePayloadTooLarge(NodeError):
    """The node (or the gRPC message limit) refused the size of the request or its answer."""

    code = "node_payload_too_large"
    http_status = 413
    grpc_status = "RESOURCE_EXHAUSTED"


class NodeRateLimited(NodeError):
    """The node is over its rate or load limit; details.retry_after_s says when to retry."""

    code = "node_rate_limited"
    http_status = 429
    grpc_status = "RESOURCE_EXHAUSTED"


class TlsHandshakeFailed(NodeUnavailable):
    """The TLS handshake with the node failed (certificate chain, name pin, protocol): no channel."""

    code = "tls_handshake_failed"


class VerticalFailed(NodeUnavailable):
    """A vertical (split-learning) training round lost a node."""


class JobFailed(NodeUnavailable):
    """A federated training job could not run (too few nodes, a round failed)."""

    def __init__(self, message: str) -> None:
        super().__init__("federation", message)


class Overloaded(XgateError):
    """The gateway's bounded queue (count, bytes or a requester's fair share) is full: retry later.

    Always carries `retry_after_s`; the REST edge sends it as a whole-second Retry-After (>= 1)."""

    code = "overloaded"
    http_status = 503
    grpc_status = "UNAVAILABLE"


class IdempotencyInProgress(XgateError):
    """A request with the same idempotency key is still being answered (here or on another replica).

    Always carries `retry_after_s`; the REST edge sends it as Retry-After."""

    code = "idempotency_in_progress"
    http_status = 409
    grpc_status = "ABORTED"


class DeadlineExceeded(XgateError):
    """The request's own deadline passed before it was answered; its work was cancelled."""

    code = "deadline_exceeded"
    http_status = 504
    grpc_status = "DEADLINE_EXCEEDED"


class RequestTimeout(InvalidInput):
    """The request body did not arrive within the read deadline (slow or lying Content-Length)."""

    code = "request_timeout"
    http_status = 408
    grpc_status = "DEADLINE_EXCEEDED"


class RequestCancelled(XgateError):
    """The caller went away (client disconnect, cancelled RPC); the work was abandoned."""

    code = "cancelled"
    http_status = 499  # nginx's "client closed request": only ever seen in logs, the client is gone
    grpc_status = "CANCELLED"


def all_error_classes() -> list[type[XgateError]]:
    """Every class of the tree in this module, base first (depth first, in definition order)."""
    out: list[type[XgateError]] = []
    stack: list[type[XgateError]] = [XgateError]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(c for c in reversed(cls.__subclasses__()) if c.__module__ == __name__)
    return out


def http_status_of(code: str) -> int | None:
    """The HTTP status of the class whose public code is `code` (None for an unknown code)."""
    for cls in all_error_classes():
        if cls.code == code:
            return cls.http_status
    return None


def retry_after_seconds(details: dict[str, Any]) -> int | None:
    """The Retry-After value for an error's details: whole seconds, rounded up, at least 1."""
    if "retry_after_s" not in details:
        return None
    try:
        seconds = float(details["retry_after_s"])
    except (TypeError, ValueError):
        return 1
    if not math.isfinite(seconds):
        return 1
    return max(1, math.ceil(seconds))


def http_headers(exc: XgateError) -> dict[str, str]:
    """The HTTP headers an error answer carries (Retry-After for 429/409-busy answers)."""
    retry = retry_after_seconds(exc.details)
    return {"Retry-After": str(retry)} if retry is not None else {}
