"""xgate/db.py on both backends: migrations, atomic transactions, lock keys across "replicas".

The PostgreSQL cases run against a real server (tests/postgres.py): two `PostgresDatabase`
objects on one database stand for two gateway processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from xgate.db import (
    Migration,
    PostgresDatabase,
    SqliteDatabase,
    migrate,
    open_database,
    open_store,
    pending,
    require_current,
)
from xgate.errors import ConfigError, StoreUnavailable

COUNTER = Migration(
    "counter",
    1,
    sqlite="CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    postgresql="CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
)
COUNTER_V2 = Migration(
    "counter",
    2,
    sqlite="ALTER TABLE counters ADD COLUMN note TEXT; CREATE INDEX counters_note ON counters (note)",
    postgresql="ALTER TABLE counters ADD COLUMN note TEXT; CREATE INDEX counters_note ON counters (note)",
)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[object, object]]:
    """Two handles on one database: two processes' view of the same shared state."""
    if request.param == "sqlite":
        yield SqliteDatabase(tmp_path / "s.sqlite"), SqliteDatabase(tmp_path / "s.sqlite")
        return
    url = request.getfixturevalue("pg_url")
    a, b = PostgresDatabase(url, max_size=4), PostgresDatabase(url, max_size=4)
    with a.transaction() as tx:
        tx.execute("DROP TABLE IF EXISTS counters")
        tx.execute("DROP TABLE IF EXISTS xgate_schema")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_migrations_apply_once_in_order_and_report_what_is_pending(db_pair: tuple) -> None:  # type: ignore[type-arg]
    a, b = db_pair
    assert [m.version for m in pending(a, [COUNTER, COUNTER_V2])] == [1, 2]
    with pytest.raises(ConfigError, match=r"counter v1, counter v2 pending\): run `xgate gateway migrate`"):
        require_current(a, [COUNTER, COUNTER_V2])
    assert [m.version for m in migrate(a, [COUNTER_V2, COUNTER])] == [1, 2]
    assert migrate(b, [COUNTER, COUNTER_V2]) == []  # the other process sees them applied
    require_current(b, [COUNTER, COUNTER_V2])
    with b.transaction() as tx:
        tx.execute("INSERT INTO counters (name, value, note) VALUES (?, ?, ?)", ("x", 1, "100% sure?"))
    with a.read() as tx:
        assert tx.execute("SELECT value, note FROM counters WHERE name = ?", ("x",)).fetchone() == (1, "100% sure?")


def test_a_failed_transaction_leaves_nothing(db_pair: tuple) -> None:  # type: ignore[type-arg]
    a, _ = db_pair
    migrate(a, [COUNTER])
    with pytest.raises(RuntimeError), a.transaction() as tx:
        tx.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("y", 1))
        raise RuntimeError("refused half-way")
    with a.read() as tx:
        assert tx.execute("SELECT COUNT(*) FROM counters").fetchone() == (0,)


def test_read_modify_write_under_a_lock_key_is_exact_across_two_handles(db_pair: tuple) -> None:  # type: ignore[type-arg]
    """The over-spend race: read a count, decide, write it back, from 8 threads on two "replicas".

    Without the lock key (PostgreSQL, READ COMMITTED) two transactions read the same value and one
    increment is lost; with it every increment lands.
    """
    a, b = db_pair
    migrate(a, [COUNTER])
    with a.transaction() as tx:
        tx.execute("INSERT INTO counters (name, value) VALUES (?, ?)", ("budget", 0))
    per_thread = 25

    def spend(db: SqliteDatabase | PostgresDatabase) -> None:
        for _ in range(per_thread):
            with db.transaction(lock=["subject-1"]) as tx:
                (value,) = tx.execute("SELECT value FROM counters WHERE name = ?", ("budget",)).fetchone()
                tx.execute("UPDATE counters SET value = ? WHERE name = ?", (value + 1, "budget"))

    threads = [threading.Thread(target=spend, args=(db,)) for db in (a, b) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with a.read() as tx:
        assert tx.execute("SELECT value FROM counters WHERE name = ?", ("budget",)).fetchone() == (8 * per_thread,)


def test_without_the_lock_key_postgres_loses_updates(pg_url: str) -> None:
    """The attack the lock key stops: shows the race is real, so the test above can fail."""
    a, b = PostgresDatabase(pg_url, max_size=4), PostgresDatabase(pg_url, max_size=4)
    try:
        with a.transaction() as tx:
            tx.execute("DROP TABLE IF EXISTS race")
            tx.execute("CREATE TABLE race (value BIGINT NOT NULL)")
            tx.execute("INSERT INTO race VALUES (0)")
        barrier = threading.Barrier(2)

        def spend(db: PostgresDatabase) -> None:
            with db.transaction() as tx:  # no lock key
                (value,) = tx.execute("SELECT value FROM race").fetchone()
                barrier.wait(timeout=10)  # both have read before either writes
                tx.execute("UPDATE race SET value = ?", (value + 1,))

        threads = [threading.Thread(target=spend, args=(db,)) for db in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with a.read() as tx:
            assert tx.execute("SELECT value FROM race").fetchone() == (1,)  # one of two increments lost
    finally:
        a.close()
        b.close()


def test_an_unreachable_server_is_a_503_without_the_connection_string() -> None:
    db = PostgresDatabase("postgresql://xgate:s3cret@127.0.0.1:1/none", connect_timeout_s=1.0)
    try:
        with pytest.raises(StoreUnavailable) as caught, db.transaction():
            pass
    finally:
        db.close()
    assert caught.value.http_status == 503
    assert "s3cret" not in caught.value.message and "127.0.0.1" not in caught.value.message


def test_open_database_chooses_by_target(tmp_path: Path) -> None:
    assert isinstance(open_database(tmp_path / "x.sqlite"), SqliteDatabase)
    with pytest.raises(ConfigError, match=r"unsupported database URL scheme: mysql://"):
        open_database("mysql://root@localhost/test")


def test_a_store_given_a_database_url_or_dsn_refuses_instead_of_making_a_file(tmp_path: Path) -> None:
    """Text is a SQLite path to a store: a URL or libpq DSN there once made a SQLite file named
    'user=postgres dbname=...' in the working directory (seen in review)."""
    for target in ("postgresql://postgres@127.0.0.1/test", "user=postgres dbname=test host=127.0.0.1"):
        with pytest.raises(ConfigError, match="is a database URL or DSN, not a store file"):
            open_store(target, [])
    assert isinstance(open_store(str(tmp_path / "plain.sqlite"), []), SqliteDatabase)
