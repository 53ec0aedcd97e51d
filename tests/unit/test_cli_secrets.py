"""A failing CLI command never prints the caller's API key or a national id.

`xgate check` runs as a real subprocess (`python -m app.cli`) with the key in XGATE_API_KEY.
Bad subjects files get a one-line error naming the file and line (never its content); an
unexpected failure still prints a traceback, but without local variables (typer's default
shows them, and `check`'s locals hold the API key): every Typer app is created with
`pretty_exceptions_show_locals=False`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "xk_live_Sup3rS3cretApiKey0123456789"
GOOD_ID = "110101199003074514"  # a well-formed id (check character right), synthetic
OTHER_ID = "11010119900307459X"
PACKAGES = ("xgate", "app", "client", "exchange", "gateway", "nodes", "federated", "policies", "audit", "crypto")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XGATE_")}
    env.update(XGATE_API_KEY=SECRET, PYTHONPATH=str(ROOT), COLUMNS="200", FLWR_TELEMETRY_ENABLED="0")
    env.pop("_TYPER_STANDARD_TRACEBACK", None)
    return env


def _check_args(tmp_path: Path, subjects: Path) -> list[str]:
    key = tmp_path / "pseudonym.key"
    key.write_text("ab" * 32)
    return [
        "check", "--program", "dibao", "--subjects", str(subjects), "--purpose", "dibao",
        "--legal-basis", "L-1", "--case-id", "C-1", "--pseudonym-key", str(key),
        "--key-file", str(tmp_path / "requester.key"), "--gateway", "http://127.0.0.1:1",
    ]  # fmt: skip


def _leaks(output: str) -> list[str]:
    return [s for s in (SECRET, GOOD_ID, OTHER_ID, OTHER_ID[:17]) if s in output]


BAD_FILES = {
    "no national_id column": f"nid,name\n{GOOD_ID},Zhang\n".encode(),
    "no header line": f"{GOOD_ID}\n{OTHER_ID}\n".encode(),
    "not UTF-8": b"national_id\n" + GOOD_ID.encode() + b"\n\xff\xfe" + OTHER_ID.encode() + b"\n",
    "a malformed id after a good one": f"national_id\n{GOOD_ID}\n{OTHER_ID[:-1]}Y\n".encode(),
    "a wrong check character": f"national_id\n{GOOD_ID[:-1]}5\n".encode(),
    "an empty id": f"national_id,name\n{GOOD_ID},a\n,b\n".encode(),
    "no subjects": b"national_id\n",
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_subjects_file_is_refused_naming_file_and_line_not_content(tmp_path: Path, case: str) -> None:
    from client.subjects import read_subjects
    from xgate.errors import InvalidInput

    subjects = tmp_path / "subjects.csv"
    subjects.write_bytes(BAD_FILES[case])
    with pytest.raises(InvalidInput) as info:
        read_subjects(subjects)
    assert info.value.message.startswith(f"subjects file {subjects}")
    assert _leaks(info.value.message) == []


@pytest.mark.parametrize("case", ["no national_id column", "a malformed id after a good one"])
def test_xgate_check_with_a_bad_subjects_file_prints_one_line_without_secrets(tmp_path: Path, case: str) -> None:
    subjects = tmp_path / "subjects.csv"
    subjects.write_bytes(BAD_FILES[case])
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", *_check_args(tmp_path, subjects)],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert run.stderr.startswith(f"error: subjects file {subjects}") and run.stderr.count("\n") == 1, output
    assert "Traceback" not in output and "╭" not in output, output
    assert _leaks(output) == [], output


def test_good_subjects_file_is_read_in_order_and_normalised(tmp_path: Path) -> None:
    from client.subjects import read_subjects

    subjects = tmp_path / "subjects.csv"
    subjects.write_bytes(("\ufeffname,national_id\na, " + GOOD_ID + "\nb," + OTHER_ID.lower() + "\n").encode())
    assert read_subjects(subjects) == [GOOD_ID, OTHER_ID]


def test_an_unexpected_failure_prints_no_locals(tmp_path: Path) -> None:
    """A bug deep inside `check` (simulated): the traceback must not show `api_key` or the ids."""
    subjects = tmp_path / "subjects.csv"
    subjects.write_text(f"national_id\n{GOOD_ID}\n{OTHER_ID}\n")
    script = (
        "import sys, client.subjects as s\n"
        "def broken(path):\n"
        "    ids = path.read_text().split()\n"
        "    raise RuntimeError('simulated bug')\n"
        "s.read_subjects = broken\n"
        "from app.cli import app\n"
        "sys.argv = ['xgate', *sys.argv[1:]]\n"
        "app()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, *_check_args(tmp_path, subjects)],
        capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120,
    )  # fmt: skip
    output = run.stdout + run.stderr
    # The failure is reported as what it is (its type and where xgate called into it), its message
    # left out: a message may quote input, a key included.
    assert run.returncode == 3 and "internal error (RuntimeError at " in output, output
    assert "simulated bug" not in output and "Traceback" not in output, output
    assert _leaks(output) == [], output


def test_every_typer_app_hides_locals() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and ast.unparse(node.func) in ("typer.Typer", "Typer"):
                    hides = any(
                        k.arg == "pretty_exceptions_show_locals"
                        and isinstance(k.value, ast.Constant)
                        and k.value.value is False
                        for k in node.keywords
                    )
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", hides))
    assert len(found) >= 8  # the apps were found at all
    assert [where for where, hides in found if not hides] == []
