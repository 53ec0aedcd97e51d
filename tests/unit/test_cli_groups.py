"""`xgate <group>` loads only that group's code, and says exactly what the whole command says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("audit", "federated", "nodes", "gateway", "app.train_cli", "app.pki_cli", "policies.policy_cli")


def test_a_command_imports_only_its_own_group() -> None:
    """Before, every `xgate` command imported every group (0.8 s of imports), the audit and training
    code included, for a caseworker's `xgate check`."""
    script = (
        "import sys\n"
        "sys.argv = ['xgate', 'check', '--help']\n"
        "from app.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('MODULES', __import__('json').dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("MODULES "))
    assert json.loads(line.removeprefix("MODULES ")) == []
    assert "Usage: xgate check" in done.stdout


@pytest.mark.parametrize("name", cli.ORDER)
def test_each_command_alone_answers_as_in_the_whole_command(name: str) -> None:
    runner = CliRunner()
    whole = runner.invoke(cli.build(), [name, "--help"], prog_name="xgate", terminal_width=100)
    alone = runner.invoke(cli.build(name), [name, "--help"], prog_name="xgate", terminal_width=100)
    assert whole.exit_code == alone.exit_code == 0, whole.output + alone.output
    assert alone.output == whole.output


def test_the_listing_names_every_command_once() -> None:
    listed = [c.name for c in cli.build().registered_commands] + [g.name for g in cli.build().registered_groups]
    assert sorted(str(n) for n in listed) == sorted(cli.ORDER)
    nowhere = CliRunner().invoke(cli.build(), ["fly"], prog_name="xgate")
    assert nowhere.exit_code == 2 and "No such command 'fly'" in nowhere.output
