"""One error hierarchy for all of xgate.

Pure modules raise these; the edges (FastAPI routes, gRPC servicers, CLI) map them to
HTTP status codes, gRPC status codes and exit codes via the class attributes, so the mapping
lives in exactly one place. Messages are public: they must never carry another agency's
values, national ids or key material — name the field, the agency or the rule instead.
"""

from __future__ import annotations

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

    def to_public(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidInput(XgateError):
    """A request, file or message is malformed or violates a declared constraint."""

    code = "invalid_input"
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"
    http_status = 413
    grpc_status = "RESOURCE_EXHAUSTED"


class ConfigError(XgateError):
    """A configuration, program, mapping or policy file cannot be used."""

    code = "config_error"
    http_status = 500
    grpc_status = "FAILED_PRECONDITION"


class NotFound(XgateError):
    code = "not_found"
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
    """Stored or received evidence (audit log, proof, checkpoint) does not verify."""

    code = "integrity_error"
    http_status = 409
    grpc_status = "DATA_LOSS"


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


class NodeRefused(NodeError):
    """The node's own policy decision point refused (the provider decides)."""

    code = "node_refused"
    http_status = 403
    grpc_status = "PERMISSION_DENIED"
