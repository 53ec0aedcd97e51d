"""`xgate node ...`: load data into a node store and serve it."""

from __future__ import annotations

from pathlib import Path

import typer

from nodes.config import load_node_config
from nodes.loader import parse_file, store_parsed
from nodes.store import open_node_store
from policies.catalogue import load_catalogue
from xgate.cli_support import fail_on_error
from xgate.pseudonym import Pseudonymiser, load_key

app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_show_locals=False, help="Agency node: load data, serve the gRPC API"
)


@app.command("load")
def load(
    config: Path = typer.Option(..., "--config", help="node config TOML"),
    data: Path = typer.Option(..., "--data", help="CSV or Parquet extract"),
    mapping: Path = typer.Option(..., "--mapping", help="mapping TOML naming each column's data element"),
) -> None:
    """Validate every row and load the file atomically (any invalid row refuses the whole file).

    The file is validated before the store is opened, and a store this command created is removed
    again if storing fails: a refused load leaves no store behind.
    """
    with fail_on_error():
        cfg = load_node_config(config)
        catalogue, _ = load_catalogue(cfg.node.catalogue)
        pseudonymiser = Pseudonymiser(load_key(cfg.node.pseudonym_key_file))
        parsed = parse_file(data, mapping, catalogue, pseudonymiser)
        created = not cfg.node.store.exists()
        store = open_node_store(cfg.node)
        try:
            report = store_parsed(store, parsed)
        except BaseException:
            store.close()
            if created:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    cfg.node.store.with_name(cfg.node.store.name + suffix).unlink(missing_ok=True)
            raise
        store.close()
        typer.echo(
            f"loaded dataset '{report.dataset}': {report.rows} rows, {report.values} values "
            f"(sha256 {report.source_sha256[:16]}…) into {cfg.node.store}"
        )


@app.command("serve")
def serve(
    config: Path = typer.Option(..., "--config", help="node config TOML"),
    insecure: bool = typer.Option(False, "--insecure", help="serve without TLS (development only)"),
) -> None:
    """Serve the node's gRPC API until SIGTERM/SIGINT."""
    from nodes.server import serve as run
    from xgate.logging import configure

    with fail_on_error():
        cfg = load_node_config(config)
        if insecure:
            cfg.node.insecure = True
        configure(f"node:{cfg.node.agency}")
        run(cfg)


@app.command("supernode")
def supernode(config: Path = typer.Option(..., "--config", help="node config TOML with a training table")) -> None:
    """Run this agency's Flower SuperNode against the gateway's SuperLink until SIGTERM/SIGINT."""
    from federated.supernode_site import run_supernode
    from nodes.supernode import site_from_config
    from xgate.logging import configure

    with fail_on_error():
        site = site_from_config(load_node_config(config))
        configure(f"supernode:{site.agency}")
        raise typer.Exit(run_supernode(site))
