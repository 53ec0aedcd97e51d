"""`xgate requester keygen`: the printed entry is what requesters.toml takes, and registers the key written."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from app.cli import app
from crypto.envelope import SigningKey
from policies.requesters import load_requesters


def test_keygen_prints_the_entry_that_registers_the_key_it_writes(tmp_path: Path) -> None:
    out = tmp_path / "cw.sign.key"
    res = CliRunner().invoke(
        app, ["requester", "keygen", "--user", "cw-zhou", "--agency", "civil_affairs", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert os.stat(out).st_mode & 0o777 == 0o600
    (tmp_path / "requesters.toml").write_text(res.output)
    (registered,) = load_requesters(tmp_path).values()
    assert (registered.user, registered.agency) == ("cw-zhou", "civil_affairs")
    assert registered.signer.key_id == SigningKey.load(out).key_id


def test_keygen_never_overwrites_a_key_and_names_empty_fields(tmp_path: Path) -> None:
    out = tmp_path / "cw.sign.key"
    out.write_text("an existing key")
    again = CliRunner().invoke(app, ["requester", "keygen", "--user", "cw", "--agency", "tax", "--out", str(out)])
    assert again.exit_code == 1 and "exists; refusing to overwrite" in again.output
    assert out.read_text() == "an existing key"
    empty = CliRunner().invoke(
        app, ["requester", "keygen", "--user", " ", "--agency", "tax", "--out", str(tmp_path / "k")]
    )
    assert empty.exit_code == 1 and "--user must be the user id the gateway knows you by" in empty.output
    assert not (tmp_path / "k").exists()


def test_keygen_refuses_an_id_or_agency_the_registry_would_not_take(tmp_path: Path) -> None:
    """A user id with characters the users file refuses (or a resident id), an agency that is not an
    id, and an --out in a directory that does not exist: named, nothing written."""
    runner = CliRunner()
    for user, agency, why in (
        ("cw-\U0001f600", "civil_affairs", "--user must be"),
        ("110101199003071233", "civil_affairs", "--user must be"),
        ("cw-zhou", "Civil Affairs", "--agency must be an agency id"),
    ):
        res = runner.invoke(
            app, ["requester", "keygen", "--user", user, "--agency", agency, "--out", str(tmp_path / "k")]
        )
        assert res.exit_code == 1 and why in res.output, (user, agency, res.output)
    res = runner.invoke(
        app, ["requester", "keygen", "--user", "cw", "--agency", "tax", "--out", str(tmp_path / "no" / "k")]
    )
    assert res.exit_code == 1 and "does not exist" in res.output
    assert list(tmp_path.iterdir()) == []
