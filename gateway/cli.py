"""`xgate gateway ...`: run the gateway."""

from __future__ import annotations

from pathlib import Path

import typer

from xgate.cli_support import fail_on_error

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
