"""Structured logging that carries no personal data.

Every log line is JSON (structlog). Field names that could carry personal data or secrets are
refused outright: a processor raises in tests and drops the field in production, so a careless
`log.info(national_id=...)` cannot leak. Log pseudonyms and digests only.
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
    }
)


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in FORBIDDEN_KEYS:
            if os.environ.get("XGATE_STRICT_LOGS") == "1":
                raise ValueError(f"log field '{key}' may carry personal data or secrets")
            event[key] = "[redacted]"
    return event


def configure(component: str, level: str | None = None) -> None:
    """Configure structlog for one process; call once at process start."""
    lvl = getattr(logging, (level or os.environ.get("XGATE_LOG_LEVEL", "INFO")).upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
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
    structlog.contextvars.bind_contextvars(component=component)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
