"""The console's static pages at /console/, under a strict CSP.

The pages are plain HTML and JavaScript modules; they call the same public REST API as every
other client (gateway/routes/*.py), with the officer's own API key (Authorization: Bearer).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xgate.errors import ConfigError

STATIC_DIR = Path(__file__).resolve().parent.parent / "console" / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class _SecurityHeaders:
    """Strict CSP and friends on the console's static files (no inline script, no framing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-cache"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_static(app: FastAPI) -> None:
    """Serve the console's pages at /console/ (they call the same public API as every client)."""
    if not STATIC_DIR.is_dir():
        raise ConfigError("console static files are missing from the installation")
    app.mount("/console", _SecurityHeaders(StaticFiles(directory=STATIC_DIR, html=True)), name="console")
