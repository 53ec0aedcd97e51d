"""The CLI edge (xgate/cli_support.py): a failure of input or environment that no command
translated itself is one `error:` line naming the path, never a traceback; a bug keeps its
traceback (it is not dressed up as bad input)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import typer

from xgate.cli_support import fail_on_error, plain_reason, run


@pytest.fixture(autouse=True)
def _no_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["xgate"])  # not pytest's own


def _failing(exc: BaseException) -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def go() -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (IsADirectoryError(21, "Is a directory", "data/"), "data/: is a directory, a file was expected"),
        (FileNotFoundError(2, "No such file or directory", "jobs/x.toml"), "jobs/x.toml: no such file or directory"),
        (PermissionError(13, "Permission denied", "ca.key"), "ca.key: permission denied"),
    ],
)
def test_a_path_error_names_the_path(exc: OSError, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run(_failing(exc))
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: {expected}" and "Traceback" not in err


def test_bytes_databases_json_and_nesting_get_one_line_each(tmp_path: Path) -> None:
    try:
        b"m\xe4le".decode()
    except UnicodeDecodeError as exc:
        assert plain_reason(exc) == "a file is not UTF-8 text (byte b'\\xe4' at offset 1)"
    not_a_db = tmp_path / "x.sqlite"
    not_a_db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(sqlite3.DatabaseError) as db:
        sqlite3.connect(not_a_db).execute("SELECT 1 FROM sqlite_master")
    assert (plain_reason(db.value) or "").startswith("database: file is not a database")
    with pytest.raises(json.JSONDecodeError) as bad_json:
        json.loads('{"a": ')
    assert plain_reason(bad_json.value) == "malformed JSON at line 1, column 7: Expecting value"
    assert plain_reason(RecursionError()) == "input nested too deeply"


def test_a_bug_is_an_internal_error_line_never_bad_input_nor_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that is not about input or environment is not dressed up as bad input (exit 3, its
    type and where xgate raised it named); a reviewer found a dozen inputs that still ended in
    tracebacks, so none does. Its message is not shown: it may quote input, a secret included."""
    assert plain_reason(KeyError("x")) is None
    with pytest.raises(SystemExit) as info:
        run(_failing(ValueError("invalid literal for int(): 'xgk_secret'")))
    err = capsys.readouterr().err
    assert info.value.code == 3 and "Traceback" not in err and "xgk_secret" not in err, err
    assert err.startswith("error: internal error (ValueError at tests/unit/test_cli_support.py:") and " in go)" in err
    assert "XGATE_DEBUG=1" in err
    monkeypatch.setenv("XGATE_DEBUG", "1")  # the developer's view: the traceback
    with pytest.raises(ZeroDivisionError):
        run(_failing(ZeroDivisionError("a bug")))


def test_a_service_keeps_its_traceback_for_its_log(monkeypatch: pytest.MonkeyPatch) -> None:
    from xgate import cli_support

    monkeypatch.setattr(cli_support._SERVICE, "keep_tracebacks", False)
    cli_support.keep_tracebacks()  # what `gateway serve`, `node serve` and `node supernode` call first
    with pytest.raises(ZeroDivisionError):
        run(_failing(ZeroDivisionError("a crash while serving")))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://127.0.0.1:1", "could not reach https://127.0.0.1:1: "),  # nobody listening
        ("notaurl", "could not reach the gateway: Request URL is missing an 'http://' or 'https://' protocol"),
    ],
)
def test_a_gateway_that_cannot_be_reached_is_one_line(
    url: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`consent list` or `approval grant` with the gateway down or a malformed URL ended in httpx's traceback."""
    import httpx

    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def go() -> None:
        with httpx.Client(timeout=5) as http:
            http.get(url)

    with pytest.raises(SystemExit) as info:
        run(app)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith(f"error: {expected}") and "Traceback" not in err, err


def test_a_commands_own_exit_code_passes_through(capsys: pytest.CaptureFixture[str]) -> None:
    """`typer.Exit(1)` raised inside `fail_on_error` (a DENY from `policy explain`) is the command's
    answer, not an internal error (exit 3)."""
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def go() -> None:
        with fail_on_error():
            raise typer.Exit(1)

    with pytest.raises(SystemExit) as info:
        run(app)
    assert info.value.code == 1 and "internal error" not in capsys.readouterr().err
