"""`xgate gateway ...`: run the gateway."""

from __future__ import annotations

from pathlib import Path

import typer

from xgate.cli_support import fail_on_error, keep_tracebacks

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Gateway: REST API, fan-out to nodes, HE combination",
)


@app.command("serve")
def serve(
    config: Path = typer.Option(..., "--config", help="gateway config TOML"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS anywhere (development only)"),
) -> None:
    """Serve the REST API until SIGTERM/SIGINT."""
    keep_tracebacks()  # a crash of a service is a bug: its traceback goes to the service's log
    from gateway.config import load_gateway_config
    from gateway.server import serve as run
    from xgate.logging import configure

    with fail_on_error():
        cfg = load_gateway_config(config)
        if insecure:
            cfg.gateway.insecure = True
            cfg.tls = None
        configure("gateway")
        run(cfg)


@app.command("migrate")
def migrate_schema(
    config: Path = typer.Option(..., "--config", help="gateway config TOML naming [gateway] database"),
) -> None:
    """Apply the shared database's pending schema steps (replicated mode); safe to run again."""
    from gateway.config import load_gateway_config
    from gateway.state import GATEWAY_MIGRATIONS, apply_migrations, shared_database
    from xgate.db import pending
    from xgate.errors import ConfigError

    with fail_on_error():
        cfg = load_gateway_config(config)
        db = shared_database(cfg)
        if db is None:
            raise ConfigError(
                "this gateway keeps its state in SQLite files (no [gateway] database): "
                "their schema is applied at start, there is nothing to migrate"
            )
        try:
            todo = pending(db, GATEWAY_MIGRATIONS)
            applied = apply_migrations(db)
        finally:
            db.close()
        for m in applied:
            typer.echo(f"applied {m.component} v{m.version}")
        typer.echo(
            f"schema current: {len(GATEWAY_MIGRATIONS)} steps, {len(applied)} applied now, "
            f"{len(GATEWAY_MIGRATIONS) - len(todo)} already there"
        )
