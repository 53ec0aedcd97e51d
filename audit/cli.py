"""`xgate audit ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="Tamper-evident audit log: verify, export, evidence bundles")
