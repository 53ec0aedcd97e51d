"""The REST API's contract: one error shape with a request id, and an OpenAPI document that says
what the server really does.

* Every error, whoever raises it (our handlers, FastAPI's request validation, Starlette's routing,
  the admission middleware, an unexpected exception), is answered as
  `{"error": <code>, "message": <text>, "details": {...}?, "request_id": <id>}`; parse errors are
  400 `invalid_input`, never FastAPI's 422 shape. Every response carries `X-Request-Id`.
* Integers in paths and query strings beyond the signed 64-bit range (what SQLite stores) are a
  400 naming the parameter, before any handler runs (they used to end in OverflowError -> 500).
* `contract_openapi` rewrites the generated document: 400 (not 422) with the error schema, every
  status an operation can answer with, the API-key security schemes, integer bounds, and no
  reference to a schema that is not defined.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xgate.errors import InvalidInput, XgateError, http_headers
from xgate.logging import get_logger

log = get_logger("xgate.gateway")

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
ERROR_SCHEMA = "Error"
REQUEST_ID_HEADER = b"x-request-id"


def request_id_of(scope: Scope) -> str:
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = str(uuid.uuid4())
    return str(state["request_id"])


def error_document(scope: Scope, code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    body["request_id"] = request_id_of(scope)
    return body


def error_response(request: Request, exc: XgateError) -> JSONResponse:
    request.state.error = exc.code
    body = error_document(request.scope, exc.code, exc.message, exc.details)
    return JSONResponse(body, status_code=exc.http_status, headers=http_headers(exc))


# ---------------------------------------------------------------------------------------------
# Error handlers
# ---------------------------------------------------------------------------------------------
_HTTP_CODES = {
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "method not allowed on this resource"),
}


# FastAPI's answer when the body cannot be decoded at all (json.loads raised something else than a
# JSONDecodeError: not UTF-8, nested past the recursion limit, an integer of thousands of digits).
_FASTAPI_UNPARSED_BODY = "There was an error parsing the body"
_UNPARSED_BODY = (
    "body: not a JSON document the gateway can read (UTF-8, nested under 1,000 deep, numbers of at most 4,300 digits)"
)


def _problem(error: Mapping[str, Any]) -> dict[str, str]:
    """One validation problem as the API states it: the field's dotted path and what is wrong."""
    if error.get("type") == "json_invalid":  # its loc holds the character offset, not a field
        position = next((p for p in error.get("loc", ()) if isinstance(p, int)), None)
        reason = str(error.get("ctx", {}).get("error", "")) or "malformed"
        where = f" at character {position}" if position is not None else ""
        return {"field": "body", "problem": f"not valid JSON ({reason}{where})"}
    return {"field": ".".join(str(p) for p in error["loc"] if p != "body"), "problem": error["msg"]}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(XgateError)
    async def _xgate_error(request: Request, exc: XgateError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.error = "invalid_input"
        problems = [_problem(e) for e in exc.errors()]
        first = problems[0] if problems else {"field": "body", "problem": "invalid"}
        body = error_document(
            request.scope,
            "invalid_input",
            f"{first['field'] or 'body'}: {first['problem']}",
            {"problems": problems[:20]},
        )
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
        if exc.status_code == 400 and exc.detail == _FASTAPI_UNPARSED_BODY:  # not UTF-8, too deep, a huge number
            code, message = "invalid_input", _UNPARSED_BODY
        request.state.error = code
        headers = dict(exc.headers or {})
        return JSONResponse(error_document(request.scope, code, message), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request_failed", route=audited_route(request.scope, 500))
        body = error_document(request.scope, "internal_error", "internal error")
        return JSONResponse(body, status_code=500, headers={"X-Request-Id": request_id_of(request.scope)})


# ---------------------------------------------------------------------------------------------
# The outermost middleware: request id, integer range
# ---------------------------------------------------------------------------------------------
def _out_of_range(value: str) -> bool:
    if not _INTEGER.match(value):
        return False
    digits = value.lstrip("+-")
    if len(digits.lstrip("0")) > 19:  # beyond any int64, and never parse a huge digit string
        return True
    return not INT64_MIN <= int(value) <= INT64_MAX


def integer_out_of_range(scope: Scope) -> str | None:
    """The name of a path segment or query parameter holding an integer beyond int64, if any."""
    for segment in scope.get("path", "").split("/"):
        if _out_of_range(unquote(segment)):
            return "path"
    try:
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return None
    for name, value in pairs:
        if _out_of_range(value.strip()):
            return f"query parameter '{name[:64]}'"
    return None


class ContractMiddleware:
    """Gives every request an id (X-Request-Id on every answer), refuses int64 overflows, and
    holds every JSON error answer to the one shape, also those of routers that build their own
    error responses (the request id is added; a `{"detail": ...}` body is reshaped)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        held: Message | None = None
        parts: list[bytes] = []

        async def send_in_shape(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode())]}
                if message["status"] >= 400 and _is_json(message):
                    held = message  # error bodies are small: hold it to check the shape
                    return
            elif message["type"] == "http.response.body" and held is not None:
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, body = _in_shape(held, b"".join(parts), request_id)
                held = None
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        where = integer_out_of_range(scope)
        if where is not None:
            exc = InvalidInput(f"{where}: integer outside the signed 64-bit range")
            scope["state"]["error"] = exc.code
            response = JSONResponse(error_document(scope, exc.code, exc.message), status_code=400)
            await response(scope, receive, send_in_shape)
            return
        await self.app(scope, receive, send_in_shape)


def _is_json(start: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"application/json") for k, v in start["headers"])


def _in_shape(start: Message, body: bytes, request_id: str) -> tuple[Message, bytes]:
    try:
        doc = json.loads(body)
    except ValueError:
        return start, body
    if not isinstance(doc, dict):
        return start, body
    if "error" not in doc and "detail" in doc:  # a framework-shaped error that slipped through
        doc = {"error": "http_error", "message": str(doc["detail"])[:300]}
    if "error" not in doc or doc.get("request_id") == request_id:
        return start, body
    doc["request_id"] = request_id
    new = json.dumps(doc, separators=(",", ":")).encode()
    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
    return {**start, "headers": [*headers, (b"content-length", str(len(new)).encode())]}, new


# ---------------------------------------------------------------------------------------------
# The OpenAPI document
# ---------------------------------------------------------------------------------------------
_ERROR = {
    "type": "object",
    "required": ["error", "message", "request_id"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable code, e.g. invalid_input, overloaded"},
        "message": {"type": "string", "description": "what is wrong, for people; never personal data"},
        "details": {"type": "object", "additionalProperties": True},
        "request_id": {"type": "string", "description": "also sent as the X-Request-Id header"},
    },
    "additionalProperties": False,
}
_DESCRIPTIONS = {
    400: "Invalid input (malformed body, parameter out of range, repeated API key header)",
    401: "Missing, invalid or disabled API key",
    403: "Refused by role or policy",
    404: "No such resource",
    408: "Request body not received within the read deadline",
    409: "Conflict (integrity, a job that exists, a busy runner, an Idempotency-Key still running)",
    413: "Request body or batch too large",
    415: "Request body not sent as uncompressed application/json (UTF-8)",
    422: "Idempotency-Key reused with another request body",
    429: "Rate limit, failed-authentication limit or probing budget exhausted (Retry-After)",
    500: "Internal error",
    502: "A node answered with something malformed or unverifiable",
    503: "Overloaded, audit log unavailable or a node unavailable (Retry-After when known)",
    504: "A node or the request's own deadline timed out",
}
_RETRY_AFTER = {
    "description": "whole seconds to wait before retrying (at least 1)",
    "schema": {"type": "integer", "minimum": 1},
}


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """Every status an operation can answer with, besides its success codes."""
    out = {400, 500}
    if path.startswith("/v1/"):
        out |= {401, 403, 429, 503}  # authentication, role/policy, rate limits, audit unavailable
    if "{" in path:
        out.add(404)
    if "requestBody" in operation or method in {"post", "put", "patch"}:
        out |= {408, 413, 415, 503}
    if path.startswith(("/v1/checks", "/v1/nodes", "/v1/audit/checkpoints", "/v1/console/checkpoints")):
        out |= {502, 503, 504, 404}
    if path.startswith("/v1/checks"):
        out |= {404, 409, 413, 422}  # 409/422: Idempotency-Key still running / reused with another body
    if path.startswith(("/v1/training", "/v1/audit", "/v1/console", "/v1/consents", "/v1/subjects", "/v1/policies")):
        out |= {404, 409}
    return out


def _bound_integers(schema: Any) -> None:
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            schema.setdefault("maximum", INT64_MAX)
            schema.setdefault("minimum", INT64_MIN)
        for value in schema.values():
            _bound_integers(value)
    elif isinstance(schema, list):
        for value in schema:
            _bound_integers(value)


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def dangling_refs(doc: dict[str, Any]) -> set[str]:
    """References in the document that point at no component."""
    schemas = doc.get("components", {}).get("schemas", {})
    return {r for r in _refs(doc) if not (r.startswith("#/components/schemas/") and r.rsplit("/", 1)[1] in schemas)}


def _hoist_defs(node: Any, schemas: dict[str, Any]) -> None:
    """Move inline `$defs` (a pydantic schema pasted into `openapi_extra`) into the components,
    where their `#/components/schemas/...` references point."""
    if isinstance(node, dict):
        for name, schema in node.pop("$defs", {}).items():
            schemas.setdefault(name, schema)
        for value in node.values():
            _hoist_defs(value, schemas)
    elif isinstance(node, list):
        for value in node:
            _hoist_defs(value, schemas)


def rewrite_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """The generated document, corrected to the server's real behaviour (see module docstring)."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _hoist_defs(doc.get("paths", {}), schemas)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas[ERROR_SCHEMA] = _ERROR
    components["securitySchemes"] = {
        "bearerApiKey": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer xgk_<id>_<secret>"},
        "headerApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    error_content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                del responses["422"]  # FastAPI's validation answer: ours is a 400
            for status in sorted(_statuses(path, method, operation)):
                response: dict[str, Any] = {"description": _DESCRIPTIONS[status], "content": error_content}
                if status in (429, 503):
                    response["headers"] = {"Retry-After": _RETRY_AFTER}
                responses.setdefault(str(status), response)
            for status, response in responses.items():  # a route's own error entries get the shape too
                if status[:1] in "45" and isinstance(response, dict):
                    response.setdefault("content", error_content)
            if path.startswith("/v1/"):
                operation["security"] = [{"bearerApiKey": []}, {"headerApiKey": []}]
            if path == "/v1/checks" and method == "post":
                operation.setdefault("parameters", []).append(
                    {
                        "name": "X-Request-Timeout",
                        "in": "header",
                        "required": False,
                        "description": "seconds this caller will wait; the check is cancelled after it (504)",
                        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                    }
                )
    _bound_integers(doc.get("paths", {}))
    _bound_integers(schemas)
    return doc


def contract_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = rewrite_openapi(doc)
        return app.openapi_schema

    return openapi


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}")
_SAFE_PARAM = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


def audited_route(scope: Scope, status: int) -> str:
    """What a request entry names: the matched route's template, never the raw path (anyone,
    unauthenticated, could fill it with a name, an address or an id the append-only log would
    keep for ever). Its parameters are filled in for an answered request only, whose handler
    accepted them, and only where they are plain identifiers; an unmatched path is "<unmatched>"."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return "<unmatched>"
    if status >= 400:
        return template
    params = scope.get("path_params", {})

    def fill(match: re.Match[str]) -> str:
        value = str(params.get(match.group(1), ""))
        return value if _SAFE_PARAM.match(value) else match.group(0)

    return _PARAM.sub(fill, template)
