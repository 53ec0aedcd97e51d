"""A real PostgreSQL server for the replicated-mode tests, with a fresh database per test run.

Order of preference:
1. the machine's server (`XGATE_TEST_PG`, default `postgresql://postgres@127.0.0.1:5432/test`):
   a database `xgate_t_<random>` is created on it and dropped at the end;
2. otherwise a throwaway server started from the installed PostgreSQL binaries (`initdb` +
   `pg_ctl` in a temporary directory, on a Unix socket only), stopped at the end;
3. otherwise the tests that need it are skipped with a loud reason, and the terminal summary says
   plainly that the replicated tests did not run (tests/summary banner), never silently.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PG_BANNER = "REPLICATED (POSTGRESQL) TESTS DID NOT RUN"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _reachable(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _pg_bin() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class ThrowawayServer:
    """A PostgreSQL cluster of the test's own (initdb in a temporary directory, Unix socket only).

    `stop()` and `start()` let a test take the database away from running gateways and bring it
    back, without touching the machine's server that other tests use.
    """

    def __init__(self, pg_bin: Path) -> None:
        self.pg_bin = pg_bin
        self.root = Path(tempfile.mkdtemp(prefix="xgate-pg-"))
        self.data, self.sock, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.sock.mkdir()
        self.run_as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: hand the directory to `postgres`
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
            self.run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*self.run_as, str(pg_bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.sock}"

    def _ctl(self, *args: str) -> None:
        # The server must not inherit our pipes, or waiting for pg_ctl's output never ends: -l, DEVNULL.
        subprocess.run([*self.run_as, str(self.pg_bin / "pg_ctl"), "-D", str(self.data), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)  # fmt: skip

    def start(self) -> None:
        opts = f"-c listen_addresses='' -c unix_socket_directories={self.sock} -c fsync=off"
        self._ctl("-l", str(self.log), "-o", opts, "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def _throwaway_server(pg_bin: Path) -> Iterator[str]:
    server = ThrowawayServer(pg_bin)
    try:
        server.start()
        yield server.url
    finally:
        server.destroy()


@contextlib.contextmanager
def own_server() -> Iterator[ThrowawayServer | None]:
    """A started throwaway cluster (None where no PostgreSQL binaries are installed)."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        yield None
        return
    server = ThrowawayServer(pg_bin)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def _with_db(url: str, dbname: str) -> str:
    import psycopg.conninfo

    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


@contextlib.contextmanager
def fresh_database() -> Iterator[str | None]:
    """Yields a conninfo for a new, empty database (dropped afterwards), or None with no server."""
    import psycopg

    admin = os.environ.get("XGATE_TEST_PG", DEFAULT_ADMIN_URL)
    with contextlib.ExitStack() as stack:
        if not _reachable(admin):
            pg_bin = _pg_bin()
            if pg_bin is None:
                yield None
                return
            admin = stack.enter_context(_throwaway_server(pg_bin))
        name = f"xgate_t_{secrets.token_hex(6)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_db(admin, name)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def as_url(conninfo: str) -> str:
    """A postgresql:// URL (what the gateway config and the CLI take) for the fixture's conninfo."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    d = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    user, db, host, port = d.get("user", "postgres"), d.get("dbname", "postgres"), d.get("host", ""), d.get("port")
    if host.startswith("/"):  # a Unix socket directory (a throwaway server)
        return f"postgresql://{quote(user)}@/{quote(db)}?host={quote(host)}"
    return f"postgresql://{quote(user)}@{host or '127.0.0.1'}{':' + port if port else ''}/{quote(db)}"


def reset_component(db: Any, component: str, *tables: str) -> None:
    """Forget one store's tables and its migration record in a shared test database, so the next
    `migrate` (or `require_current`) sees it as never installed (tests share one database per run)."""
    with db.transaction() as tx:
        tx.execute(f"DROP TABLE IF EXISTS {', '.join(tables)}")
        tx.execute("CREATE TABLE IF NOT EXISTS xgate_schema (component TEXT NOT NULL, version INTEGER NOT NULL)")
        tx.execute("DELETE FROM xgate_schema WHERE component = ?", (component,))
