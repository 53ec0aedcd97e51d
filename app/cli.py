"""The `xgate` command: one entry point, one sub-command group per capability."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from xgate.cli_support import fail_on_error, run

HELP = "xgate: privacy-preserving cross-agency data exchange gateway"
# Each group's module, imported only when the command line names it: `xgate check` need not load
# the audit, training and PKI code (0.8 s of imports for every command before).
GROUPS: dict[str, str] = {
    "node": "nodes.cli",
    "gateway": "gateway.cli",
    "consent": "client.consent_cli",
    "approval": "client.approval_cli",
    "requester": "client.requester_cli",
    "audit": "audit.cli",
    "pki": "app.pki_cli",
    "train": "app.train_cli",
    "policy": "policies.policy_cli",
    "config": "app.deploy_cli:config_app",
    "keys": "app.deploy_cli:keys_app",
}
# Set-up commands that live with the deployment code but belong in these groups.
EXTRA_COMMANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "node": (("init", "node_init"),),
    "gateway": (("init", "gateway_init"),),
    "policy": (("init", "policy_init"), ("publish", "policy_publish"), ("install", "policy_install")),
}


def _group(name: str) -> typer.Typer:
    module, _, attribute = GROUPS[name].partition(":")
    group: typer.Typer = getattr(importlib.import_module(module), attribute or "app")
    registered = {c.name for c in group.registered_commands}
    for command, function in EXTRA_COMMANDS.get(name, ()):
        if command not in registered:  # the group object is shared: register once per process
            group.command(command)(getattr(importlib.import_module("app.deploy_cli"), function))
    return group


def _root() -> None:
    pass


def build(only: str | None = None) -> typer.Typer:
    """The `xgate` command with every group, or with only `only` (a group or top-level command)."""
    cli = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, help=HELP)
    cli.callback()(_root)  # a group even with one command: typer would run a lone command as the root
    for name in ORDER:
        if only not in (None, name):
            continue
        if name in GROUPS:
            cli.add_typer(_group(name), name=name)
        elif name == "check":
            from client.cli import check

            cli.command("check")(check)
        else:
            cli.command(name)(LOCAL_COMMANDS[name])
    return cli


def __getattr__(name: str) -> Any:
    """`app`: the whole command (tests and documentation drive it in-process)."""
    if name == "app":
        return build()
    raise AttributeError(name)


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


LOCAL_COMMANDS: dict[str, Callable[..., None]] = {"demo-data": demo_data, "demo": demo}
ORDER = ("node", "gateway", "check", *(g for g in GROUPS if g not in ("node", "gateway")), *LOCAL_COMMANDS)

# Owner-only for every file and directory this process and its children (gateway, nodes, SuperNodes,
# ClientApps, local training) create: stores, holdouts, audit logs, state, the job cache, extracts.
PRIVATE_UMASK = 0o077


def main() -> None:
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)  # keeps any stricter bits the caller set
    named = sys.argv[1] if len(sys.argv) > 1 else None
    run(build(named if named in ORDER else None))  # help, or an unknown command: every group, for the listing


if __name__ == "__main__":
    main()
