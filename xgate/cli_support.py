"""Shared CLI behaviour: one-line errors and exit codes instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from xgate.errors import XgateError


@contextmanager
def fail_on_error() -> Iterator[None]:
    try:
        yield
    except XgateError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        sys.exit(1 if exc.http_status < 500 else 2)
