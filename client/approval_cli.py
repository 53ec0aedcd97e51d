"""`xgate approval`: the approver's side. Approvals are signed by their approver, never typed by a requester.

    xgate approval keygen --name ap-wu --agency civil_affairs --out ap.key   # prints the approvers.toml entry
    xgate approval grant  --key ap.key --agency civil_affairs --program dibao --case-id DB-2026-0042 \\
                          --max-subjects 50 --days 30 [--role case_supervisor]
    xgate approval grant  ... --subject-id <national id> --pseudonym-key k    # a subject-list scope instead
    xgate approval grant  --key ap.key --agency hrss --dataset medical.claims_2025 --case-id-prefix job- \
                          --days 30                                 # a training approval (job ids as cases)
    xgate approval list
    xgate approval revoke apr_...

The approver signs each approval (xgate-approval/1) with its Ed25519 key (the gateway and the
nodes accept only keys registered in the policy directory's approvers.toml) and registers it with
its API key (role approver). grant prints the reference the caseworker names as approval_ref.
Subject national ids are pseudonymised locally and never sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer

from client.consent_cli import _answer, _client
from xgate.cli_support import fail_on_error

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, help=__doc__)

GATEWAY = typer.Option("https://127.0.0.1:8443", "--gateway", envvar="XGATE_GATEWAY")
API_KEY = typer.Option(..., "--api-key", envvar="XGATE_API_KEY", help="the approver's key (XGATE_API_KEY)")
CA = typer.Option(None, "--ca", help="federation CA certificate to verify the gateway")


def approval_body(
    *,
    ref: str,
    approver: str,
    approver_role: str,
    agencies: Sequence[str],
    programs: Sequence[str],
    valid_from: datetime,
    datasets: Sequence[str] = (),
    days: int,
    case_ids: Sequence[str] = (),
    case_id_prefix: str | None = None,
    subjects: Sequence[str] = (),
    max_subjects: int | None = None,
) -> dict[str, Any]:
    """The xgate-approval/1 body (policies.approvals.ApprovalBody); scope checks happen when it is parsed."""
    body: dict[str, Any] = {
        "ref": ref,
        "approver": approver,
        "approver_role": approver_role,
        "agencies": list(agencies),
        "programs": list(programs),
        "valid_from": valid_from.isoformat(),
        "valid_until": (valid_from + timedelta(days=days)).isoformat(),
    }
    if datasets:
        body["datasets"] = list(datasets)
    if case_ids:
        body["case_ids"] = list(case_ids)
    if case_id_prefix is not None:
        body["case_id_prefix"] = case_id_prefix
    if subjects:
        body["subjects"] = list(subjects)
    if max_subjects is not None:
        body["max_subjects"] = max_subjects
    return body


@app.command("keygen")
def keygen(
    name: str = typer.Option(..., "--name", help="the approver's user id"),
    agency: list[str] = typer.Option(..., "--agency", help="requesting agency it may approve for (repeatable)"),
    out: Path = typer.Option(..., "--out", help="private key file to write (0600)"),
    role: list[str] = typer.Option(
        ["case_supervisor"], "--role", help="official role it approves in (repeatable; `grant --role` names one)"
    ),
) -> None:
    """Create an approver's signing key; prints its approvers.toml entry."""
    from crypto.envelope import SigningKey
    from xgate.errors import InvalidInput

    with fail_on_error():
        if out.exists():
            raise InvalidInput(f"{out} exists; refusing to overwrite a key")
        key = SigningKey.generate(name, "approver")
        key.save(out)
        public = base64.b64encode(key.public_raw).decode()
        entry = f'name = "{name}"\nagencies = {json.dumps(agency)}\nroles = {json.dumps(role)}\npublic_key = "{public}"'
        typer.echo(f"[[approver]]\n{entry}")


@app.command("grant")
def grant(
    key: Path = typer.Option(..., "--key", help="the approver's signing key"),
    agency: list[str] = typer.Option(..., "--agency", help="requesting agency approved for (repeatable)"),
    program: list[str] = typer.Option([], "--program", help="program(s) approved for checks (repeatable)"),
    dataset: list[str] = typer.Option([], "--dataset", help="training dataset(s) approved for jobs (repeatable)"),
    case_id: list[str] = typer.Option([], "--case-id", help="case id approved (repeatable)"),
    case_id_prefix: str | None = typer.Option(None, "--case-id-prefix", help="instead: every case id with this prefix"),
    max_subjects: int | None = typer.Option(None, "--max-subjects", min=1, help="scope: at most this many subjects"),
    subject_id: list[str] = typer.Option([], "--subject-id", help="scope instead: these people (never sent)"),
    pseudonym_key: Path | None = typer.Option(None, "--pseudonym-key", help="federation pseudonym key file"),
    role: str = typer.Option("case_supervisor", "--role", help="the approver's official role"),
    days: int = typer.Option(30, "--days", min=1, max=3660),
    ref_only: bool = typer.Option(False, "--ref-only", help="print only the reference (for scripts)"),
    gateway: str = GATEWAY,
    api_key: str = API_KEY,
    ca: Path | None = CA,
) -> None:
    """Sign an approval and register it; prints the reference the caseworker names as approval_ref."""
    from pydantic import ValidationError

    from crypto.artefacts import sign_artefact
    from crypto.envelope import SigningKey
    from policies.approvals import APPROVAL_FORMAT, ApprovalBody, new_ref
    from xgate.errors import InvalidInput
    from xgate.pseudonym import Pseudonymiser, load_key

    with fail_on_error():
        signer = SigningKey.load(key)
        subjects: list[str] = []
        if subject_id:
            if pseudonym_key is None:
                raise InvalidInput("--subject-id needs --pseudonym-key")
            pseudonymise = Pseudonymiser(load_key(pseudonym_key)).pseudonym
            subjects = [pseudonymise(s) for s in subject_id]
        body = approval_body(
            ref=new_ref(),
            approver=signer.agency,  # keygen's --name
            approver_role=role,
            agencies=agency,
            programs=program,
            datasets=dataset,
            valid_from=datetime.now(UTC),
            days=days,
            case_ids=case_id,
            case_id_prefix=case_id_prefix,
            subjects=subjects,
            max_subjects=max_subjects,
        )
        try:
            ApprovalBody.model_validate(body)
        except ValidationError as exc:  # its last line is pydantic's "For further information visit ..."
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            problem = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidInput(f"approval: {where + ': ' if where else ''}{problem}") from None
        with _client(gateway, api_key, ca) as http:
            artefact = sign_artefact(body, signer, fmt=APPROVAL_FORMAT)
            view = _answer(http.post("/v1/approvals", json={"artefact": artefact}))
        typer.echo(view["ref"] if ref_only else json.dumps(view))


@app.command("list")
def listing(gateway: str = GATEWAY, api_key: str = API_KEY, ca: Path | None = CA) -> None:
    """The approvals this approver registered, with their status."""
    with fail_on_error(), _client(gateway, api_key, ca) as http:
        for view in _answer(http.get("/v1/approvals")):
            typer.echo(json.dumps(view))


@app.command("revoke")
def revoke(
    ref: str = typer.Argument(..., help="the approval reference (apr_...)"),
    gateway: str = GATEWAY,
    api_key: str = API_KEY,
    ca: Path | None = CA,
) -> None:
    """Revoke an approval; checks that name it are refused from now on."""
    with fail_on_error(), _client(gateway, api_key, ca) as http:
        typer.echo(json.dumps(_answer(http.delete(f"/v1/approvals/{ref}"))))
