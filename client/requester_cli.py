"""`xgate requester`: a requesting user's signing key, which signs every check it makes.

    xgate requester keygen --user cw-zhou --agency civil_affairs --out cw-zhou.sign.key   # prints the entry

Only the public half travels: the federation operator appends the printed `[[requester]]` entry
to the policy set's requesters.toml and publishes the CA-signed bundle. `xgate check
--signing-key` then signs each check (policies/check_statements.py); the gateway and every node
refuse a check its requester did not sign for exactly that question, HE context and subjects.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from xgate.cli_support import fail_on_error

_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")  # as the gateway's users file takes them
_AGENCY = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, help=__doc__)


@app.command("keygen")
def keygen(
    user: str = typer.Option(..., "--user", help="the user id the gateway knows you by"),
    agency: str = typer.Option(..., "--agency", help="your agency"),
    out: Path = typer.Option(..., "--out", help="private key file to write (0600)"),
) -> None:
    """Create a requester's signing key; prints its requesters.toml entry."""
    from crypto.envelope import SigningKey
    from policies.requesters import requester_entry
    from xgate.errors import InvalidInput
    from xgate.pseudonym import contains_national_id

    with fail_on_error():
        if not _USER.match(user) or contains_national_id(user):
            raise InvalidInput("--user must be the user id the gateway knows you by (1-64 of letters, digits, _ . @ -)")
        if not _AGENCY.match(agency):
            raise InvalidInput("--agency must be an agency id (lowercase letters, digits, '_')")
        if out.exists():
            raise InvalidInput(f"{out} exists; refusing to overwrite a key")
        if not out.parent.is_dir():
            raise InvalidInput(f"--out {out}: directory {out.parent} does not exist")
        key = SigningKey.generate(agency, "requester")
        key.save(out)
        typer.echo(requester_entry(user, agency, key.public_raw), nl=False)
