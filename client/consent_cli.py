"""`xgate consent`: the consent manager's side, acting for data subjects.

    xgate consent keygen --name mydata --out cm.key      # prints the consent_managers.toml entry
    xgate consent grant  --key cm.key --subject-id <national id> --pseudonym-key k --agency civil_affairs \\
                         --purpose income_certificate --program income_certificate --days 30 --max-uses 1
    xgate consent list   [--subject-id ...]
    xgate consent revoke cns_...

The consent manager signs each artefact with its own Ed25519 key (the gateway and the nodes
accept only keys registered in the policy directory's consent_managers.toml) and registers it
with its API key (role consent_manager). The subject's national id is pseudonymised locally and
never sent; grant prints the reference the subject hands to the requesting agency.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer

from xgate.cli_support import fail_on_error

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, help=__doc__)

GATEWAY = typer.Option("https://127.0.0.1:8443", "--gateway", envvar="XGATE_GATEWAY")
API_KEY = typer.Option(..., "--api-key", envvar="XGATE_API_KEY", help="the consent manager's key (XGATE_API_KEY)")
CA = typer.Option(None, "--ca", help="federation CA certificate to verify the gateway")


def consent_body(
    subject: str,
    agency: str,
    purpose: str,
    programs: list[str],
    valid_from: datetime,
    days: int,
    max_uses: int | None,
) -> dict[str, Any]:
    """The xgate-consent/1 body (policies.consent.ConsentBody) with a fresh reference."""
    return {
        "ref": "cns_" + secrets.token_urlsafe(16),
        "subject": subject,
        "agency": agency,
        "purpose": purpose,
        "programs": programs,
        "valid_from": valid_from.isoformat(),
        "valid_until": (valid_from + timedelta(days=days)).isoformat(),
        "max_uses": max_uses,
    }


def _client(gateway: str, api_key: str, ca: Path | None) -> Any:
    import httpx

    return httpx.Client(
        base_url=gateway,
        headers={"Authorization": f"Bearer {api_key}"},
        verify=str(ca) if ca else True,
        timeout=30.0,
    )


def _answer(response: Any) -> Any:
    from xgate.errors import GatewayError

    try:
        body = response.json()
    except ValueError:
        body = {"error": "bad_response", "message": response.text[:200]}
    if response.status_code >= 400:
        raise GatewayError(response.status_code, body if isinstance(body, dict) else {})
    return body


@app.command("keygen")
def keygen(
    name: str = typer.Option(..., "--name", help="the consent manager's id (its users-file agency)"),
    out: Path = typer.Option(..., "--out", help="private key file to write (0600)"),
) -> None:
    """Create a consent manager's signing key; prints its consent_managers.toml entry."""
    from crypto.envelope import SigningKey
    from xgate.errors import InvalidInput

    with fail_on_error():
        if out.exists():
            raise InvalidInput(f"{out} exists; refusing to overwrite a key")
        key = SigningKey.generate(name, "consent_manager")
        key.save(out)
        public = base64.b64encode(key.public_raw).decode()
        typer.echo(f'[[consent_manager]]\nname = "{name}"\npublic_key = "{public}"')


@app.command("grant")
def grant(
    key: Path = typer.Option(..., "--key", help="the consent manager's signing key"),
    subject_id: str = typer.Option(..., "--subject-id", help="the data subject's national id (never sent)"),
    pseudonym_key: Path = typer.Option(..., "--pseudonym-key", help="federation pseudonym key file"),
    agency: str = typer.Option(..., "--agency", help="the requesting agency the subject authorises"),
    purpose: str = typer.Option(..., "--purpose"),
    program: list[str] = typer.Option(..., "--program", help="program(s) the consent covers"),
    days: int = typer.Option(30, "--days", min=1, max=3660),
    max_uses: int | None = typer.Option(None, "--max-uses", min=1, max=10_000, help="1 = one-time consent"),
    gateway: str = GATEWAY,
    api_key: str = API_KEY,
    ca: Path | None = CA,
) -> None:
    """Sign the subject's consent and register it; prints the reference for the requesting agency."""
    from crypto.artefacts import sign_artefact
    from crypto.envelope import SigningKey
    from xgate.pseudonym import Pseudonymiser, load_key

    with fail_on_error():
        signer = SigningKey.load(key)
        subject = Pseudonymiser(load_key(pseudonym_key)).pseudonym(subject_id)
        body = consent_body(subject, agency, purpose, program, datetime.now(UTC), days, max_uses)
        with _client(gateway, api_key, ca) as http:
            view = _answer(http.post("/v1/consents", json={"artefact": sign_artefact(body, signer)}))
        typer.echo(json.dumps(view))


@app.command("list")
def listing(
    subject_id: str | None = typer.Option(None, "--subject-id", help="only this subject's consents"),
    pseudonym_key: Path | None = typer.Option(None, "--pseudonym-key"),
    gateway: str = GATEWAY,
    api_key: str = API_KEY,
    ca: Path | None = CA,
) -> None:
    """The consents this consent manager registered, with their status."""
    from xgate.errors import InvalidInput
    from xgate.pseudonym import Pseudonymiser, load_key

    with fail_on_error():
        params = {}
        if subject_id is not None:
            if pseudonym_key is None:
                raise InvalidInput("--subject-id needs --pseudonym-key")
            params["subject"] = Pseudonymiser(load_key(pseudonym_key)).pseudonym(subject_id)
        with _client(gateway, api_key, ca) as http:
            for view in _answer(http.get("/v1/consents", params=params)):
                typer.echo(json.dumps(view))


@app.command("revoke")
def revoke(
    ref: str = typer.Argument(..., help="the consent reference (cns_...)"),
    gateway: str = GATEWAY,
    api_key: str = API_KEY,
    ca: Path | None = CA,
) -> None:
    """Revoke a consent for the subject; checks that name it are refused from now on."""
    with fail_on_error(), _client(gateway, api_key, ca) as http:
        typer.echo(json.dumps(_answer(http.delete(f"/v1/consents/{ref}"))))
