"""`xgate policy ...`: validate, explain, who-can (thin wrappers over policies.decision and policies.introspect)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from policies import introspect
from policies.decision import DEFAULT_POLICY_DIR, PolicyEngine
from policies.types import AccessRequest
from xgate.cli_support import fail_on_error
from xgate.errors import InvalidInput

app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_show_locals=False, help="Access policies: validate, explain, who-can"
)

_CONTEXT_KEYS = {
    "purpose",
    "legal_basis",
    "case_id",
    "consent_ref",
    "consent_valid",
    "approval_ref",
    "program",
    "requesting_agency",
    "at",
}
DirOption = typer.Option(DEFAULT_POLICY_DIR, "--dir", help="policy directory")


@app.command("validate")
def validate(directory: Path = typer.Argument(DEFAULT_POLICY_DIR, help="policy directory")) -> None:
    """Parse and validate every policy and data file against the schema."""
    with fail_on_error():
        engine = PolicyEngine.load(directory)
        permits = sum(1 for p in engine.policies if p.effect == "permit")
        typer.echo(f"OK: {len(engine.policies)} policies ({permits} permit, {len(engine.policies) - permits} forbid)")
        typer.echo(f"policy set sha256: {engine.policy_set_hash}")


def _parse_context(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--context is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInput("--context must be a JSON object")
    unknown = sorted(set(data) - _CONTEXT_KEYS)
    if unknown:
        raise InvalidInput(f"--context: unknown keys {unknown}; allowed: {sorted(_CONTEXT_KEYS)}")
    if "at" in data:
        try:
            data["at"] = datetime.fromisoformat(str(data["at"]))
        except ValueError:
            raise InvalidInput("--context: 'at' must be an ISO 8601 time with offset") from None
    return data


@app.command("explain")
def explain(
    principal: str = typer.Option(..., "--principal", help="registered user id"),
    action: str = typer.Option(..., "--action", help="check | train | read_audit | administer"),
    resource: str = typer.Option(..., "--resource", help="e.g. DataElement::tax.monthly_income"),
    context: str = typer.Option("", "--context", help='JSON, e.g. {"purpose": "dibao", "legal_basis": "..."}'),
    directory: Path = DirOption,
) -> None:
    """Decide one request and show why: every relevant policy with each condition ok/FAIL."""
    with fail_on_error():
        engine = PolicyEngine.load(directory)
        request = AccessRequest(principal=principal, action=action, resource=resource, **_parse_context(context))
        typer.echo(introspect.explain(engine, request))
        if not engine.decide(request).allowed:
            raise typer.Exit(1)


@app.command("who-can")
def who_can(
    data_element: str = typer.Option(..., "--data-element", help="e.g. tax.monthly_income"),
    action: str = typer.Option("check", "--action"),
    directory: Path = DirOption,
) -> None:
    """List the agreements that can release a data element, to whom and for which purposes."""
    with fail_on_error():
        engine = PolicyEngine.load(directory)
        grants = introspect.who_can(engine, data_element, action)
        if not grants:
            typer.echo(f"nobody: no permit grants '{action}' on {data_element}")
        for g in grants:
            typer.echo(f"{g.policy_id}  ({g.source})")
            if "agreement" in g.annotations:
                typer.echo(f"  agreement:  {g.annotations['agreement']}")
            who = ", ".join(f"{k}={v}" for k, v in g.principal.items()) or "any principal"
            typer.echo(f"  principal:  {who}")
            typer.echo(f"  actions:    {', '.join(g.actions)}")
            typer.echo(f"  purposes:   {', '.join(g.purposes) or 'any registered purpose'}")
            for cond in g.conditions:
                typer.echo(f"  condition:  {cond}")
            if "budget_max_checks" in g.annotations:
                a = g.annotations
                typer.echo(f"  budget:     {a['budget_max_checks']} per subject per {a['budget_window_days']} days")
            typer.echo(f"  registered: {', '.join(g.principals) or '(no registered user qualifies)'}")
        forbids = introspect.restrictions(engine, data_element, action)
        if forbids:
            typer.echo("restrictions (forbid overrides permit):")
            for f in forbids:
                typer.echo(f"  {f.info.id}: {f.info.annotations.get('description', '')}")
