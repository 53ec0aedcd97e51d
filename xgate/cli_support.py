"""Shared CLI behaviour: one-line errors and exit codes instead of tracebacks.

An input or environment failure no command translated itself is one `error:` line naming the path
or the bytes (exit 1). Anything else is a bug, or an input xgate does not check yet: it is one
`internal error` line with the exception's type and where xgate raised it (exit 3; never its
message, which may quote input), never dressed up as bad input, and `XGATE_DEBUG=1` shows its
traceback. Long-running services keep their tracebacks for their logs (`keep_tracebacks`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import typer

from xgate.errors import XgateError


def plain_reason(exc: BaseException) -> str | None:
    """What an operator needs to read for a failure that comes from their input or environment
    (a path, a file's bytes, a database file, a gateway out of reach), or None for anything else
    (fail_on_error then reports an internal error)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        what = {
            FileNotFoundError: "no such file or directory",
            IsADirectoryError: "is a directory, a file was expected",
            NotADirectoryError: "a path component is not a directory",
            PermissionError: "permission denied",
            FileExistsError: "already exists",
        }.get(type(exc), exc.strerror or type(exc).__name__)
        return f"{exc.filename}: {what}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r} at offset {exc.start})"
    if isinstance(exc, json.JSONDecodeError):
        return f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if isinstance(exc, sqlite3.DatabaseError):
        return f"database: {exc} (is the path an xgate database, and is no other process writing it?)"
    if isinstance(exc, RecursionError):
        return "input nested too deeply"
    if "httpx" in sys.modules:  # a command talking to a gateway; never imported here for the others
        import httpx

        if isinstance(exc, httpx.RequestError):
            try:
                url = exc.request.url
                where = f"{url.scheme}://{url.netloc.decode()}" if url.scheme and url.netloc else "the gateway"
            except RuntimeError:  # raised before a request existed
                where = "the gateway"
            return f"could not reach {where}: {exc} ({type(exc).__name__}; check --gateway and that it is running)"
    return None


def _exit_with(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(code)


@contextmanager
def fail_on_error() -> Iterator[None]:
    try:
        yield
    except XgateError as exc:
        _exit_with(exc.message, 1 if exc.http_status < 500 else 2)
    except (click.exceptions.Exit, click.exceptions.Abort, click.exceptions.ClickException):
        raise  # a command's own exit code (typer.Exit), Ctrl-C, a usage error: click reports them
    except Exception as exc:
        reason = plain_reason(exc)
        if reason is not None:
            _exit_with(reason, 1)
        if os.environ.get("XGATE_DEBUG") or _SERVICE.keep_tracebacks:
            raise
        _exit_with(
            f"internal error ({type(exc).__name__}{_where(exc)}); this is a bug in xgate or an input it does not"
            " check yet: please report it (XGATE_DEBUG=1 shows the traceback)",
            3,
        )


def _where(exc: BaseException) -> str:
    """Where in xgate's own code it was raised: the message itself may quote input, even a secret."""
    ours = [(f, _ours(f.filename)) for f in traceback.extract_tb(exc.__traceback__)]
    ours = [(f, path) for f, path in ours if path is not None]
    if not ours:
        return ""
    frame, path = ours[-1]
    return f" at {path}:{frame.lineno} in {frame.name}"


def _ours(filename: str) -> Path | None:
    """`filename` relative to the checkout when it is xgate's own code (a venv inside it is not)."""
    path = Path(filename)
    if not path.is_relative_to(_ROOT):
        return None
    relative = path.relative_to(_ROOT)
    return relative if relative.parts[0] in _OWN_CODE else None


class _Service:
    """Whether this process is a long-running service (see keep_tracebacks)."""

    keep_tracebacks = False


_SERVICE = _Service()
_ROOT = Path(__file__).resolve().parents[1]
_OWN_CODE = {
    "app",
    "audit",
    "client",
    "crypto",
    "exchange",
    "federated",
    "gateway",
    "nodes",
    "policies",
    "xgate",
    "tests",
}


def keep_tracebacks() -> None:
    """For `serve` and other long-running commands: a crash is a bug whose traceback belongs in the
    service's log, not one line on a terminal nobody watches."""
    _SERVICE.keep_tracebacks = True


def run(app: typer.Typer) -> None:
    """The `xgate` entry point: every command, with failures of input or environment that a
    command did not translate itself shown as one line."""
    with fail_on_error():
        app()
