"""Structured logging that carries no personal data.

Every log line is JSON (structlog). Field names that could carry personal data or secrets are
refused outright: a processor raises in strict mode (XGATE_STRICT_LOGS=1) and redacts the field
otherwise, so a careless `log.info(national_id=...)` cannot leak. Log counts, digests and request
ids only: a pseudonym links one person's lines across logs and records, so it is refused too.
Every line names its process's component (a static processor: lines from any thread carry it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys that must never reach a log line, whatever their value.
FORBIDDEN_KEYS = frozenset(
    {
        "national_id",
        "id_number",
        "value",
        "values",
        "income",
        "plaintext",
        "secret_key",
        "key",
        "private_key",
        "password",
        "token",
        "api_key",
        "pseudonym_key",
        "mask_key",
        # who a line is about: a pseudonym is linkable across a node's records and logs, a case id
        # or a name identifies the person (log counts under other names, e.g. `subject_count`)
        "pseudonym",
        "pseudonyms",
        "subject",
        "subjects",
        "case_id",
        "name",
    }
)


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in FORBIDDEN_KEYS:
            if os.environ.get("XGATE_STRICT_LOGS") == "1":
                raise ValueError(f"log field '{key}' may carry personal data or secrets")
            event[key] = "[redacted]"
    return event


def _component(component: str) -> Any:
    """A processor naming the process's component on every line: static, so lines logged from
    any thread (gRPC handlers, Flower's) carry it, which a context variable bound in the main
    thread did not."""

    def add(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("component", component)
        return event

    return add


def configure(component: str, level: str | None = None) -> None:
    """Configure structlog for one process; call once at process start (xgate's Flower ClientApp
    and ServerApp processes call it at their entry: federated/clientapp_entry.py, server_app.py)."""
    lvl = getattr(logging, (level or os.environ.get("XGATE_LOG_LEVEL", "INFO")).upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _component(component),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
