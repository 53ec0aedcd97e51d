"""The `xgate` command: one entry point, one sub-command group per capability."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from app.deploy_cli import config_app, gateway_init, keys_app, node_init, policy_init, policy_install, policy_publish
from app.pki_cli import app as pki_app
from app.train_cli import app as train_app
from audit.cli import app as audit_app
from client.approval_cli import app as approval_app
from client.cli import check
from client.consent_cli import app as consent_app
from client.requester_cli import app as requester_app
from gateway.cli import app as gateway_app
from nodes.cli import app as node_app
from policies.policy_cli import app as policy_app
from xgate.cli_support import fail_on_error, run

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="xgate: privacy-preserving cross-agency data exchange gateway",
)
app.add_typer(node_app, name="node")
app.add_typer(gateway_app, name="gateway")
app.command("check")(check)
app.add_typer(consent_app, name="consent")
app.add_typer(approval_app, name="approval")
app.add_typer(requester_app, name="requester")
app.add_typer(audit_app, name="audit")
app.add_typer(pki_app, name="pki")
app.add_typer(train_app, name="train")
app.add_typer(policy_app, name="policy")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
node_app.command("init")(node_init)
gateway_app.command("init")(gateway_init)
policy_app.command("init")(policy_init)
policy_app.command("publish")(policy_publish)
policy_app.command("install")(policy_install)


@app.command("demo-data")
def demo_data(
    out: Path = typer.Option(Path("var/demo/data"), "--out", help="directory for CSV extracts and mappings"),
    people: int = typer.Option(100_000, "--people", min=100, max=2_000_000),
    applicants: int = typer.Option(1000, "--applicants", min=1),
    seed: int = typer.Option(20261123, "--seed", min=0, max=2**32 - 1),
) -> None:
    """Write a seeded synthetic federation: one CSV + mapping per agency, and applicants.csv."""
    from app.synth import generate, write_federation

    with fail_on_error():
        paths = write_federation(out, generate(people, seed), applicants=min(applicants, people))
        for name, path in paths.items():
            typer.echo(f"{name:>14}: {path}")


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path("var/demo"), "--workdir", help="scratch directory (recreated)"),
    people: int = typer.Option(100_000, "--people", min=1000, max=2_000_000),
    applicants: int = typer.Option(1000, "--applicants", min=1, max=100_000),
    keep: bool = typer.Option(False, "--keep", help="keep the generated CSV extracts"),
) -> None:
    """Start a five-agency federation on loopback, run the 低保 check end to end, stop everything."""
    from app.demo import run_demo

    with fail_on_error():
        raise typer.Exit(run_demo(workdir, people=people, applicants=applicants, keep=keep))


# Owner-only for every file and directory this process and its children (gateway, nodes, SuperNodes,
# ClientApps, local training) create: stores, holdouts, audit logs, state, the job cache, extracts.
PRIVATE_UMASK = 0o077


def main() -> None:
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)  # keeps any stricter bits the caller set
    run(app)


if __name__ == "__main__":
    main()
