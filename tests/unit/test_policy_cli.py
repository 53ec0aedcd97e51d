"""`xgate policy` commands: validate, explain, who-can; errors are one line and non-zero."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from policies.policy_cli import app
from tests.unit.test_policy_support import DAYTIME, copy_policies

runner = CliRunner()


def test_validate_ok_and_broken(tmp_path: Path) -> None:
    root = copy_policies(tmp_path / "p")
    ok = runner.invoke(app, ["validate", str(root)])
    assert ok.exit_code == 0 and "OK:" in ok.output and "sha256" in ok.output
    (root / "agreements" / "bad.cedar").write_text('@id("bad")\npermit (principal, action, resource) when { ; };\n')
    bad = runner.invoke(app, ["validate", str(root)])
    assert bad.exit_code != 0
    assert "bad.cedar: line 2" in bad.output


def test_explain_allow_and_deny() -> None:
    context = {"purpose": "dibao", "legal_basis": "SAR-2014-art-12", "case_id": "C-1", "at": DAYTIME.isoformat()}
    args = ["explain", "--action", "check", "--resource", "DataElement::tax.monthly_income", "--context"]
    allowed = runner.invoke(app, [*args, json.dumps(context), "--principal", "ca-caseworker-silver"])
    assert allowed.exit_code == 0, allowed.output
    assert "decision: ALLOW" in allowed.output
    denied = runner.invoke(app, [*args, json.dumps(context), "--principal", "ca-caseworker-bronze"])
    assert denied.exit_code == 1 and "decision: DENY" in denied.output
    bad = runner.invoke(app, [*args, '{"colour": "red"}', "--principal", "ca-caseworker-silver"])
    assert bad.exit_code != 0 and "unknown keys" in bad.output


def test_who_can() -> None:
    result = runner.invoke(app, ["who-can", "--data-element", "household.deceased"])
    assert result.exit_code == 0
    assert "pension-survival-household-deceased" in result.output
    assert "baseline-core-needs-approval" in result.output
    missing = runner.invoke(app, ["who-can", "--data-element", "tax.nothing"])
    assert missing.exit_code != 0
    fly = runner.invoke(app, ["who-can", "--data-element", "household.deceased", "--action", "fly"])
    assert fly.exit_code == 1 and "action must be one of check, train" in fly.output  # was "nobody: ...", exit 0
