"""REST users in the shared database (gateway/user_store.py): a user added once through one replica's
store authenticates at every replica, a disabled one nowhere; the users file's import never
re-enables what the table disabled. On SQLite and on PostgreSQL (two pools = two replicas)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.auth import Authenticator, add_user, load_users
from gateway.user_store import USER_MIGRATIONS, UserStore
from tests.postgres import as_url, reset_component
from xgate.db import PostgresDatabase, migrate
from xgate.errors import ConfigError, InvalidInput, NotFound, Unauthenticated


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def two_replicas(pg_url: str) -> Iterator[tuple[UserStore, UserStore]]:
    a, b = PostgresDatabase(pg_url, max_size=2), PostgresDatabase(pg_url, max_size=2)
    reset_component(a, "api_users", "api_users")
    migrate(a, USER_MIGRATIONS)
    try:
        yield UserStore(a), UserStore(b)
    finally:
        a.close()
        b.close()


def test_a_user_added_through_one_replica_is_known_to_the_other(two_replicas: tuple[UserStore, UserStore]) -> None:
    a, b = two_replicas
    at_a, at_b = Authenticator(store=a, store_ttl_s=0), Authenticator(store=b, store_ttl_s=0)
    key = a.add("cw-new", "civil_affairs", "caseworker", "gold")
    assert at_b.authenticate(_bearer(key)).user == "cw-new"
    rotated = b.add("cw-new", "civil_affairs", "caseworker", "silver")  # a new key disables the old one
    with pytest.raises(Unauthenticated, match="disabled"):
        at_a.authenticate(_bearer(key))
    assert at_a.authenticate(_bearer(rotated)).tier == "silver"
    assert a.disable("cw-new") == 1
    with pytest.raises(Unauthenticated, match="disabled"):
        at_b.authenticate(_bearer(rotated))
    with pytest.raises(NotFound):
        b.disable("cw-new")


def test_replicated_mode_refuses_a_user_table_that_was_not_migrated(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    try:
        reset_component(db, "api_users", "api_users")
        with pytest.raises(ConfigError, match="api_users v1 pending"):
            UserStore(db)
    finally:
        db.close()


def test_the_users_file_import_adds_keys_and_never_re_enables_one(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    key = add_user(users, "cw-file", "civil_affairs", "caseworker", "gold")
    store = UserStore(tmp_path / "users.sqlite")
    auth = Authenticator(store=store, store_ttl_s=0)
    assert store.import_records(load_users(users)) == 1
    assert store.import_records(load_users(users)) == 0  # every start imports again: nothing doubles
    assert auth.authenticate(_bearer(key)).user == "cw-file"
    store.disable("cw-file")
    store.import_records(load_users(users))  # the file still says enabled
    with pytest.raises(Unauthenticated, match="disabled"):
        auth.authenticate(_bearer(key))
    with pytest.raises(Unauthenticated, match="invalid API key"):
        auth.authenticate(_bearer(key[:-4] + "AAAA"))  # right key id, wrong secret


def test_a_cached_answer_lasts_only_the_ttl(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.sqlite")
    key = store.add("cw-ttl", "civil_affairs", "caseworker", "gold")
    auth = Authenticator(store=store, store_ttl_s=0.2)
    auth.authenticate(_bearer(key))
    store.disable("cw-ttl")
    import time

    time.sleep(0.25)
    with pytest.raises(Unauthenticated, match="disabled"):
        auth.authenticate(_bearer(key))


def test_add_user_on_the_command_line_with_a_database(pg_url: str, two_replicas: tuple[UserStore, UserStore]) -> None:
    from app.pki_cli import app

    _, b = two_replicas
    args = ["add-user", "--database", as_url(pg_url), "--user", "an-new", "--agency", "hrss", "--role", "analyst"]
    result = CliRunner().invoke(app, [*args, "--tier", "bronze"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[0]
    assert Authenticator(store=b, store_ttl_s=0).authenticate(_bearer(key)).role == "analyst"
    both = CliRunner().invoke(app, [*args, "--tier", "bronze", "--users", "x.json"])
    assert both.exit_code != 0 and "exactly one of --users" in both.output
    bad = CliRunner().invoke(app, ["add-user", "--database", as_url(pg_url), "--user", "x", "--agency", "hrss",
                                   "--role", "root", "--tier", "gold"])  # fmt: skip
    assert bad.exit_code != 0 and "role must be one of" in bad.output
    path = CliRunner().invoke(app, ["add-user", "--database", "users.sqlite", "--user", "x", "--agency", "hrss",
                                    "--role", "analyst", "--tier", "gold"])  # fmt: skip
    assert path.exit_code != 0 and "--database must be a postgresql:// URL" in path.output


def test_a_bad_user_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.sqlite")
    with pytest.raises(InvalidInput, match="tier must be one of"):
        store.add("cw-x", "civil_affairs", "caseworker", "platinum")
