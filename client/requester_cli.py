"""`xgate requester`: a requesting user's signing key, which signs every check it makes.

    xgate requester keygen --user cw-zhou --agency civil_affairs --out cw-zhou.sign.key   # prints the entry

Only the public half travels: the federation operator appends the printed `[[requester]]` entry
to the policy set's requesters.toml and publishes the CA-signed bundle. `xgate check
--signing-key` then signs each check (policies/check_statements.py); the gateway and every node
refuse a check its requester did not sign for exactly that question, HE context and subjects.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import typer

from xgate.cli_support import fail_on_error

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, help=__doc__)


@app.command("keygen")
def keygen(
    user: str = typer.Option(..., "--user", help="the user id the gateway knows you by"),
    agency: str = typer.Option(..., "--agency", help="your agency"),
    out: Path = typer.Option(..., "--out", help="private key file to write (0600)"),
) -> None:
    """Create a requester's signing key; prints its requesters.toml entry."""
    from crypto.envelope import SigningKey
    from xgate.errors import InvalidInput

    with fail_on_error():
        if not user.strip() or not agency.strip():
            raise InvalidInput("--user and --agency must not be empty")
        if out.exists():
            raise InvalidInput(f"{out} exists; refusing to overwrite a key")
        key = SigningKey.generate(agency, "requester")
        key.save(out)
        public = base64.b64encode(key.public_raw).decode()
        typer.echo(f'[[requester]]\nuser = {json.dumps(user)}\nagency = {json.dumps(agency)}\npublic_key = "{public}"')
