"""The `xgate` command: one entry point, one sub-command group per capability."""

from __future__ import annotations

import typer

from audit.cli import app as audit_app
from crypto.pki_cli import app as pki_app
from federated.train_cli import app as train_app
from policies.policy_cli import app as policy_app

app = typer.Typer(no_args_is_help=True, help="xgate: privacy-preserving cross-agency data exchange gateway")
app.add_typer(audit_app, name="audit")
app.add_typer(pki_app, name="pki")
app.add_typer(train_app, name="train")
app.add_typer(policy_app, name="policy")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
