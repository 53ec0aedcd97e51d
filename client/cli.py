"""`xgate check`: the caseworker's command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from xgate.cli_support import fail_on_error

if TYPE_CHECKING:
    from client.sdk import CheckResult

DEFAULT_KEY_FILE = Path(os.path.expanduser("~/.local/share/xgate/requester.key"))
DEFAULT_SIGNING_KEY = Path(os.path.expanduser("~/.local/share/xgate/requester.sign.key"))


def result_json(result: CheckResult) -> dict[str, Any]:
    """What `xgate check --json` prints: counts for every view, per-subject rows where the view has them.

    The cohort (bronze) view has counts only; asking it for rows used to fail after the check had
    been answered (and charged), losing the counts. Its counts are randomized (docs/PROTOCOL.md,
    "cohort"): per criterion the debiased estimate, its 95 % interval and the noisy count, with the
    epsilon this query spent.
    """
    out: dict[str, Any] = {
        "request_id": result.request_id,
        "program": result.program,
        "view": result.view,
        "subjects": len(result.subjects),
    }
    if result.view == "cohort":
        out["counts"] = {
            criterion: {
                "estimate": round(count.estimate, 2),
                "ci95": [round(x, 2) for x in count.interval(0.95)],
                "noisy_count": count.noisy_count,
            }
            for criterion, count in result.cohort_counts().items()
        }
        out["privacy"] = dict(result.privacy)
        return out
    out["counts"] = result.counts()
    out["rows"] = result.rows()
    return out


def check(
    program: str = typer.Option(..., "--program", help="program id, e.g. dibao"),
    subjects: Path = typer.Option(..., "--subjects", help="CSV with a national_id column"),
    purpose: str = typer.Option(..., "--purpose"),
    legal_basis: str = typer.Option(..., "--legal-basis"),
    case_id: str = typer.Option(..., "--case-id"),
    gateway: list[str] = typer.Option(
        ["https://127.0.0.1:8443"],
        "--gateway",
        envvar="XGATE_GATEWAY",
        help="gateway URL; repeat for replicas (a check that gets no answer is retried on the next,"
        " never charged twice); XGATE_GATEWAY may list several, space-separated",
    ),
    api_key: str = typer.Option(..., "--api-key", envvar="XGATE_API_KEY", help="or XGATE_API_KEY"),
    pseudonym_key: Path = typer.Option(..., "--pseudonym-key", help="federation pseudonym key file"),
    key_file: Path = typer.Option(
        DEFAULT_KEY_FILE,
        "--key-file",
        help="BFV key pair (created if absent)",
    ),
    signing_key: Path = typer.Option(
        DEFAULT_SIGNING_KEY,
        "--signing-key",
        help="your registered signing key (xgate requester keygen): signs each check",
    ),
    ca: Path | None = typer.Option(None, "--ca", help="federation CA certificate to verify the gateway"),
    consent_ref: str = typer.Option("", "--consent-ref"),
    approval_ref: str = typer.Option("", "--approval-ref"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Run an eligibility check; ids are pseudonymised and values stay encrypted end to end."""
    from client.sdk import GatewayClient
    from client.subjects import read_subjects
    from crypto.envelope import SigningKey
    from crypto.he import RequesterKeys
    from xgate.errors import InvalidInput
    from xgate.pseudonym import Pseudonymiser, load_key

    with fail_on_error():
        if not subjects.exists():
            raise InvalidInput(f"subjects file {subjects} does not exist")
        ids = read_subjects(subjects)
        if not signing_key.exists():
            raise InvalidInput(
                f"signing key {signing_key} does not exist: make one with `xgate requester keygen` and have"
                " the federation operator register its entry in requesters.toml"
            )
        signer = SigningKey.load(signing_key)
        if key_file.exists():
            keys = RequesterKeys.load(key_file)
        else:
            keys = RequesterKeys.generate()
            keys.save(key_file)
        client = GatewayClient(
            gateway,
            api_key,
            Pseudonymiser(load_key(pseudonym_key)),
            keys,
            verify=str(ca) if ca else True,
            signer=signer,
        )
        with client:
            result = client.check(program, ids, purpose, legal_basis, case_id, consent_ref, approval_ref)
        if as_json:
            typer.echo(json.dumps(result_json(result)))
            return
        if result.view != "cohort":
            rows = result.rows()
            header = list(rows[0])
            typer.echo("  ".join(header))
            for row in rows:
                typer.echo("  ".join(str(row[h]) if h == "subject" else ("pass" if row[h] else "FAIL") for h in header))
        counts = result_json(result)["counts"] if result.view == "cohort" else result.counts()
        typer.echo(f"request {result.request_id} ({result.view} view): {counts}")
        if result.view == "cohort":
            typer.echo(f"epsilon spent by this query: {result.privacy.get('epsilon_per_query', 0):g}")
