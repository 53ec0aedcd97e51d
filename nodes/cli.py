"""`xgate node ...`: load data into a node store and serve it."""

from __future__ import annotations

from pathlib import Path

import typer

from nodes.config import load_node_config
from nodes.loader import parse_file, store_parsed
from nodes.store import node_store_for_load
from policies.catalogue import load_catalogue
from xgate.cli_support import fail_on_error, keep_tracebacks
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

    The file is validated before the store is touched. A reload replaces the dataset in one
    transaction; a first load builds the store beside it and renames it into place once committed,
    so a refused, failed or killed first load leaves no store (a killed one may leave
    `<store>.loading` and `<store>.load-lock`, which the next load removes). One load at a time: a
    second one is refused with "store busy".
    """
    with fail_on_error():
        cfg = load_node_config(config)
        catalogue, _ = load_catalogue(cfg.node.catalogue)
        pseudonymiser = Pseudonymiser(load_key(cfg.node.pseudonym_key_file))
        parsed = parse_file(data, mapping, catalogue, pseudonymiser, agency=cfg.node.agency)
        with node_store_for_load(cfg.node) as store:
            report = store_parsed(store, parsed)
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
    keep_tracebacks()  # a crash of a service is a bug: its traceback goes to the service's log
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
    keep_tracebacks()  # a crash of a service is a bug: its traceback goes to the service's log
    from federated.supernode_site import run_supernode
    from nodes.supernode import site_from_config
    from xgate.logging import configure

    with fail_on_error():
        site = site_from_config(load_node_config(config))
        configure(f"supernode:{site.agency}")
        raise typer.Exit(run_supernode(site))
