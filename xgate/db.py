"""One small interface over the two databases the gateway's shared state can live in.

* **SQLite** (the embedded default, one host): a file per store; a write transaction takes the
  database's write lock up front (`BEGIN IMMEDIATE`), so check-then-write is atomic.
* **PostgreSQL** (replicated mode, any number of gateway processes on any hosts): a `psycopg` 3
  connection pool; a write transaction takes a transaction-scoped advisory lock for each *lock
  key* the caller names (for a budget: the subject), in sorted order, so two replicas charging the
  same subject serialise on it while different subjects proceed in parallel.

Statements are written once, with `?` placeholders; the PostgreSQL backend rewrites them to
psycopg's `%s` form. Schemas are versioned migrations (`Migration`), applied by `migrate` (the
`xgate gateway migrate` command for PostgreSQL; on SQLite, stores apply their own at open, as
before). A database that cannot be reached raises `StoreUnavailable` (HTTP 503), never a driver
error with a connection string in it.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from xgate.errors import ConfigError, StoreUnavailable

Dialect = Literal["sqlite", "postgresql"]
Params = Sequence[Any]


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """A transaction (or a read snapshot) on either backend."""

    dialect: Dialect

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Params]) -> None: ...

    def script(self, ddl: str) -> None:
        """Run `;`-separated DDL inside the transaction."""


class Database(Protocol):
    dialect: Dialect

    def transaction(self, lock: Sequence[str] = ()) -> Any:
        """Context manager yielding a `Tx`; commits on success, rolls back on any exception."""

    def read(self) -> Any:
        """Context manager yielding a `Tx` for reads (no write lock)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Migration:
    """One versioned schema step of one store; `sqlite` and `postgresql` say the same thing."""

    component: str
    version: int
    sqlite: str
    postgresql: str

    def ddl(self, dialect: Dialect) -> str:
        return self.sqlite if dialect == "sqlite" else self.postgresql


# --- SQLite -------------------------------------------------------------------------------------


class _SqliteTx:
    dialect: Dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        return self._conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        self._conn.executemany(sql, [tuple(r) for r in rows])

    def script(self, ddl: str) -> None:
        # executescript would COMMIT the open transaction; run the statements one by one instead.
        for statement in _statements(ddl):
            self._conn.execute(statement)


class SqliteDatabase:
    """A SQLite file in WAL mode; one connection per transaction (thread-safe, as before)."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path.name}: {exc}") from None
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextmanager
    def transaction(self, lock: Sequence[str] = ()) -> Iterator[_SqliteTx]:
        del lock  # BEGIN IMMEDIATE takes the whole database's write lock
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextmanager
    def read(self) -> Iterator[_SqliteTx]:
        conn = self._connect()
        try:
            yield _SqliteTx(conn)
        finally:
            conn.close()

    def close(self) -> None:
        """Nothing is held open between transactions."""


# --- PostgreSQL ---------------------------------------------------------------------------------

# Lock keys map onto a fixed set of advisory-lock stripes: a batch of thousands of subjects takes
# at most LOCK_STRIPES locks (PostgreSQL's shared lock table is small), and distinct keys that
# share a stripe merely wait for each other. Exactness never depends on the stripe count.
LOCK_STRIPES = 64
_LOCK_NAMESPACE = 0x7867  # "xg": keeps xgate's advisory locks apart from anyone else's


def lock_stripes(keys: Sequence[str]) -> list[int]:
    return sorted({zlib.crc32(k.encode()) % LOCK_STRIPES for k in keys})


def _to_psycopg(sql: str) -> str:
    """`?` placeholders to psycopg's `%s`; a literal `%` must be doubled for psycopg."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresTx:
    dialect: Dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        cursor: Cursor = self._conn.execute(_to_psycopg(sql), tuple(params))
        return cursor

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_to_psycopg(sql), [tuple(r) for r in rows])

    def script(self, ddl: str) -> None:
        for statement in _statements(ddl):
            self._conn.execute(statement)


class PostgresDatabase:
    """A psycopg 3 connection pool on one PostgreSQL database, shared by every store of a gateway."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, connect_timeout_s: float = 5.0) -> None:
        from psycopg_pool import ConnectionPool  # only replicated mode needs the driver loaded

        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout_s,
            kwargs={"connect_timeout": max(1, int(connect_timeout_s))},
            open=False,
            check=ConnectionPool.check_connection,  # a connection broken by a server restart is replaced
        )
        self._pool.open(wait=False)
        self._closed = threading.Event()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {type(exc).__name__}") from None

    @contextmanager
    def transaction(self, lock: Sequence[str] = ()) -> Iterator[_PostgresTx]:
        with self._connection() as conn, conn.transaction():
            stripes = lock_stripes(lock)
            if stripes:
                # One round trip; the array is sorted, so two transactions never wait on each other in a cycle.
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, s) FROM unnest(%s::int[]) AS s", (_LOCK_NAMESPACE, stripes)
                )
            yield _PostgresTx(conn)

    @contextmanager
    def read(self) -> Iterator[_PostgresTx]:
        with self._connection() as conn, conn.transaction():
            yield _PostgresTx(conn)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._pool.close()


# --- The database's clock -----------------------------------------------------------------------

# Unix seconds by the database server's clock: leases and claims stamped and compared by one clock,
# whichever replica (and whatever its own clock or deadline settings) writes or reads them.
NOW_SQL: dict[Dialect, str] = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())::float8",
}


def db_now(tx: Tx) -> float:
    """The database's clock, in Unix seconds (SQLite: the host's; PostgreSQL: the server's)."""
    return float(tx.execute("SELECT " + NOW_SQL[tx.dialect]).fetchone()[0])


def lease_migration(component: str, version: int, table: str, *, index: bool = True) -> Migration:
    """Add `owner` and `lease_until` (the database's clock, Unix seconds) to a reservation table.

    Rows pending from before get an hour from the migration (their checks are long over by then);
    rows a replica of an earlier version writes later have no lease and are never reaped (the
    conservative side, as before)."""
    steps = []
    dialects: tuple[tuple[Dialect, str], ...] = (("sqlite", "REAL"), ("postgresql", "DOUBLE PRECISION"))
    for dialect, real in dialects:
        exists = "" if dialect == "sqlite" else "IF NOT EXISTS "
        ddl = [
            f"ALTER TABLE {table} ADD COLUMN {exists}owner TEXT NOT NULL DEFAULT ''",
            f"ALTER TABLE {table} ADD COLUMN {exists}lease_until {real}",
            f"UPDATE {table} SET lease_until = {NOW_SQL[dialect]} + 3600",  # noqa: S608  # constant fragments
        ]
        if index:
            ddl.append(f"CREATE INDEX IF NOT EXISTS {table}_owner ON {table} (owner)")
        steps.append(";\n".join(ddl))
    return Migration(component, version, sqlite=steps[0], postgresql=steps[1])


# --- Opening and migrating ----------------------------------------------------------------------

SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS xgate_schema (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (component, version)
)"""


_LIBPQ_DSN = re.compile(r"(^|\s)(dbname|host|user|port)=")  # libpq's key=value connection strings


def is_postgres_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def open_database(target: Path | str) -> SqliteDatabase | PostgresDatabase:
    """A PostgreSQL URL opens the pool; anything else is a SQLite file path."""
    if isinstance(target, str) and is_postgres_url(target):
        return PostgresDatabase(target)
    if isinstance(target, str) and "://" in target:
        raise ConfigError(f"unsupported database URL scheme: {target.split('://', 1)[0]}:// (use postgresql://)")
    return SqliteDatabase(target)


def _statements(ddl: str) -> list[str]:
    return [s.strip() for s in ddl.split(";") if s.strip()]


def applied_versions(db: Database) -> set[tuple[str, int]]:
    with db.transaction(lock=["xgate_schema"]) as tx:
        tx.execute(SCHEMA_TABLE)
        return {(str(c), int(v)) for c, v in tx.execute("SELECT component, version FROM xgate_schema").fetchall()}


def pending(db: Database, migrations: Sequence[Migration]) -> list[Migration]:
    done = applied_versions(db)
    return [m for m in migrations if (m.component, m.version) not in done]


def migrate(db: Database, migrations: Sequence[Migration]) -> list[Migration]:
    """Apply what is pending, each step in its own transaction, serialised across processes."""
    applied: list[Migration] = []
    for m in sorted(migrations, key=lambda m: (m.component, m.version)):
        with db.transaction(lock=["xgate_schema"]) as tx:
            tx.execute(SCHEMA_TABLE)
            row = tx.execute(
                "SELECT 1 FROM xgate_schema WHERE component = ? AND version = ?", (m.component, m.version)
            ).fetchone()
            if row is not None:
                continue
            tx.script(m.ddl(db.dialect))
            tx.execute("INSERT INTO xgate_schema (component, version) VALUES (?, ?)", (m.component, m.version))
            applied.append(m)
    return applied


def require_current(db: Database, migrations: Sequence[Migration]) -> None:
    """Replicated mode never migrates implicitly: a schema behind the code is a startup error."""
    missing = pending(db, migrations)
    if missing:
        steps = ", ".join(f"{m.component} v{m.version}" for m in missing)
        raise ConfigError(f"database schema is behind this version ({steps} pending): run `xgate gateway migrate`")


def open_store(store: Path | str | Database, migrations: Sequence[Migration]) -> Database:
    """A store's database: a SQLite file, migrated at open (the embedded default), or a shared
    `Database` whose schema must already be current (replicated mode: `xgate gateway migrate`)."""
    if isinstance(store, str) and ("://" in store or _LIBPQ_DSN.search(store)):
        # Text is a SQLite file path here: a database URL or DSN would become a file of that name.
        raise ConfigError(f"'{store[:60]}' is a database URL or DSN, not a store file: open it with open_database")
    if isinstance(store, (str, Path)):
        db: Database = SqliteDatabase(store)
        migrate(db, migrations)
        return db
    require_current(store, migrations)
    return store
