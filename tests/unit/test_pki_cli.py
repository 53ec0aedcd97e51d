"""`xgate pki` commands end to end (in-process CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.pki_cli import app
from gateway.auth import Authenticator

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _issue_tax(ca: str, out: Path, address: str) -> list[str]:
    return ["issue", "--ca", ca, "--kind", "node", "--agency", "tax", "--out", str(out), "--address", address]


def test_init_issue_revoke_show(tmp_path: Path) -> None:
    ca = str(tmp_path / "ca")
    _ok("init", "--ca", ca, "--name", "T")
    issued = json.loads(_ok(*_issue_tax(ca, tmp_path / "tax", "127.0.0.1:7001")))
    shown = json.loads(_ok("show", issued["cert"]))
    assert (shown["agency"], shown["kind"], shown["serial"]) == ("tax", "node", issued["serial"])
    _ok("revoke", "--ca", ca, "--serial", issued["serial"])
    _ok("crl", "--ca", ca, "--days", "3")
    assert "REVOKED" in _ok("show", ca)


def test_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["issue", "--ca", str(tmp_path / "none"), "--kind", "node", "--agency", "tax", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "xgate pki init" in result.output and "Traceback" not in result.output


def test_add_user_prints_key_once(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    key = _ok(
        "add-user", "--users", str(users), "--user", "bob", "--agency", "tax", "--role", "analyst", "--tier", "bronze"
    ).strip()
    assert key.startswith("xgk_") and key not in users.read_text()
    assert Authenticator(users).authenticate({"X-API-Key": key}).role == "analyst"
    result = runner.invoke(
        app, ["add-user", "--users", str(users), "--user", "bob", "--agency", "tax", "--role", "root", "--tier", "gold"]
    )
    assert result.exit_code == 1 and "role must be one of" in result.output


def test_add_user_out_writes_the_key_owner_only_and_never_over_another_key(tmp_path: Path) -> None:
    import os

    users, out = tmp_path / "users.json", tmp_path / "bob.apikey"
    old = os.umask(0o022)
    try:
        printed = _ok("add-user", "--users", str(users), "--user", "bob", "--agency", "tax", "--role", "analyst",
                      "--tier", "bronze", "--out", str(out))  # fmt: skip
    finally:
        os.umask(old)
    key = out.read_text().strip()
    assert key.startswith("xgk_") and key not in printed and out.stat().st_mode & 0o777 == 0o600
    # Another user's key file named by mistake: it was truncated and replaced (bob's key, shown
    # once, gone for good); now refused before anything is registered.
    again = runner.invoke(app, ["add-user", "--users", str(users), "--user", "eve", "--agency", "tax", "--role",
                                "analyst", "--tier", "bronze", "--out", str(out)])  # fmt: skip
    assert again.exit_code == 1 and "already exists; an API key file is never overwritten" in again.output
    assert out.read_text().strip() == key and "eve" not in users.read_text()
    assert Authenticator(users).authenticate({"X-API-Key": key}).user == "bob"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["init", "--days", "-5"], "--days: a CA is valid for 1 to 36500 days"),  # a ValueError traceback
        (["init", "--days", "10000000"], "--days: a CA is valid for 1 to 36500 days"),  # an OverflowError
        (["init", "--days", "0"], "--days: a CA is valid for 1 to 36500 days"),  # expired at once, exit 0
        (["init", "--name", ""], "--name: a CA's name is 1 to 64 characters"),
        (["init", "--name", "n" * 65], "--name: a CA's name is 1 to 64 characters"),
    ],
)
def test_init_refuses_a_ca_it_could_not_make_or_that_would_be_stale(
    tmp_path: Path, args: list[str], message: str
) -> None:
    r = runner.invoke(
        app, [args[0], "--ca", str(tmp_path / "ca"), *args[1:]] + (["--name", "T"] if "--name" not in args else [])
    )
    assert r.exit_code == 1 and message in r.output, r.output
    assert not (tmp_path / "ca" / "ca.key.pem").exists()


@pytest.mark.parametrize("days", ["-1", "0", "99999999999"])
def test_crl_refuses_a_validity_it_could_not_sign_or_that_is_stale_at_once(tmp_path: Path, days: str) -> None:
    _ok("init", "--ca", str(tmp_path / "ca"), "--name", "T")
    r = runner.invoke(app, ["crl", "--ca", str(tmp_path / "ca"), "--days", days])
    assert r.exit_code == 1 and "--days: a CRL is valid for 1 to 366 days" in r.output, r.output


@pytest.mark.parametrize("address", ["x", "h:99999", 'h"\n:1'])
def test_the_ca_never_publishes_an_address_that_is_not_host_port(tmp_path: Path, address: str) -> None:
    """`pki set-address --address x` and `pki issue --address h:99999` published them in the signed directory."""
    ca = str(tmp_path / "ca")
    _ok("init", "--ca", ca, "--name", "T")
    r = runner.invoke(app, _issue_tax(ca, tmp_path / "t", address))
    assert r.exit_code == 1 and "--address: " in r.output and "is not host:port" in r.output, r.output
    _ok(*_issue_tax(ca, tmp_path / "t", "tax.gov:7443"))
    r = runner.invoke(app, ["set-address", "--ca", ca, "--kind", "node", "--agency", "tax", "--address", address])
    assert r.exit_code == 1 and "is not host:port" in r.output, r.output
    assert "tax.gov:7443" in (tmp_path / "ca" / "federation.json").read_text()
