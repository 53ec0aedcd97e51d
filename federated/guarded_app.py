"""xgate's ClientApps as Flower runs them: what a failure at a node tells the coordinator.

Flower's `flwr-clientapp` turns an exception raised by a ClientApp into the reply's error reason,
`str(exception)` verbatim, and the coordinator reads it: a message naming a file path, a row count
or a value from the node's store went with it. Every xgate ClientApp is a `GuardedClientApp`: any
exception raised while it answers a message (its handlers, `client_fn`, its mods, Flower's own
dispatch) becomes an error reply carrying

* for an `XgateError`: its code and public message (xgate/errors.py: public by contract);
* for anything else: `internal_error: internal error at <agency>`, nothing of the exception,

while the node logs the whole story locally (`clientapp_refused` / `clientapp_failed`, with the
traceback for the latter; structured, through xgate.logging's scrubber).
"""

from __future__ import annotations

import re

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from xgate.errors import XgateError
from xgate.logging import get_logger

log = get_logger(__name__)

_MAX_REASON = 500  # characters of a public message a reply carries
_AGENCY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def node_agency(context: Context | None) -> str:
    """The agency this SuperNode serves (its own node config), or 'this node'."""
    agency = str(context.node_config.get("agency", "")) if context is not None else ""
    return agency if _AGENCY.match(agency) else "this node"


def public_reason(exc: BaseException, agency: str) -> str:
    """What the coordinator may read of `exc`: an XgateError's code and message, else nothing."""
    if isinstance(exc, XgateError):
        return f"{exc.code}: {exc.message}"[:_MAX_REASON]
    return f"internal_error: internal error at {agency}"


def error_reply(message: Message, context: Context | None, exc: Exception) -> Message:
    """The reply to `message` for `exc`, logged here in full."""
    agency = node_agency(context)
    message_type = message.metadata.message_type[:64]
    if isinstance(exc, XgateError):
        log.warning(
            "clientapp_refused", agency=agency, message_type=message_type, code=exc.code, reason=exc.message[:300]
        )
    else:
        log.error(
            "clientapp_failed", agency=agency, message_type=message_type, error_type=type(exc).__name__, exc_info=exc
        )
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=public_reason(exc, agency)), reply_to=message
    )


class GuardedClientApp(ClientApp):
    """A Flower ClientApp whose failures reach the coordinator as `public_reason` says."""

    def __call__(self, message: Message, context: Context) -> Message:
        try:
            return super().__call__(message, context)
        except Exception as exc:  # noqa: BLE001  # every failure becomes a reply; nothing else leaves
            return error_reply(message, context, exc)


class RefusedClientApp(GuardedClientApp):
    """Answers every message with `error` (the node refused the job's app bundle: clientapp_entry)."""

    def __init__(self, error: XgateError) -> None:
        super().__init__()
        self.error = error

    def __call__(self, message: Message, context: Context) -> Message:
        return error_reply(message, context, self.error)
