"""Shared fixtures: repository paths and one HE key pair per test session (keygen ~40 ms)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from app.cli import PRIVATE_UMASK

# As the `xgate` entry point does for itself and every process it starts (app/cli.py): files the
# suite makes (stores, ledgers, audit logs it hands to real node and gateway processes) are private,
# which those processes' preflight requires. Tests of a permissive umask set one themselves.
os.umask(PRIVATE_UMASK)

# In-process code logs through structlog's default chain (the servers' processes configure JSON,
# xgate/logging.py). Its console renderer drew each logged exception with Rich, locals and all: one
# test logging a few failures spent 40 s of CPU there. Plain tracebacks; the rest of the chain as is.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)

# Loaded here (not only in tests/browser/conftest.py) so the xdist controller prints the loud
# "BROWSER TESTS DID NOT RUN" banner when Chromium is missing.
pytest_plugins = ["tests.browser.summary", "tests.pg_summary", "tests.deploy.summary"]

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors"  # test vectors and golden files: see tests/vectors/SOURCES.md


@pytest.fixture(scope="session")
def requester_keys():  # type: ignore[no-untyped-def]
    from crypto.he import RequesterKeys

    return RequesterKeys.generate()


@pytest.fixture(scope="session")
def public_context(requester_keys):  # type: ignore[no-untyped-def]
    from crypto.he import PublicContext

    return PublicContext(requester_keys.public_context)


@pytest.fixture(scope="session")
def pg_url():  # type: ignore[no-untyped-def]
    """A fresh PostgreSQL database for this test session (tests/postgres.py); loud skip without a server."""
    from tests.postgres import PG_BANNER, fresh_database

    with fresh_database() as url:
        if url is None:
            pytest.skip(f"{PG_BANNER}: no PostgreSQL server on 127.0.0.1:5432 and no initdb/pg_ctl installed")
        yield url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow files first, the longest first (`slow(seconds=...)`: the file's time on a loaded 2-core
    machine); a stable sort, so each file's tests stay together and in order.

    xdist's `--dist loadfile` hands out files in collection order when run with
    `--no-loadscope-reorder` (scripts/check; by default it sorts files by their number of tests,
    which sent the one-test, seven-minute deployment across hosts out last). A file of minute-long
    Flower jobs handed out last would run alone while the other workers idle. xdist gives a worker
    its next file as soon as two or fewer of its tests are pending, so the worker running the
    one-test deployment already holds the file after the first round (one file per worker): that
    one is a quick file, not another slow one waiting seven minutes behind it.
    """

    def seconds(item: pytest.Item) -> float:
        slow = item.get_closest_marker("slow")
        return 0.0 if slow is None else float(slow.kwargs.get("seconds", 60))

    items.sort(key=lambda item: -seconds(item))
    # On an xdist worker (where collection happens) numprocesses is None: the worker count is in workerinput.
    workerinput = getattr(config, "workerinput", None)
    workers = workerinput["workercount"] if workerinput else config.getoption("numprocesses", default=None)
    if not isinstance(workers, int) or workers < 2:
        return
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    groups = list(files.values())
    quick = next((i for i, g in enumerate(groups) if seconds(g[0]) == 0.0), None)
    if quick is not None and quick > workers and len(groups[0]) <= 2:
        groups.insert(workers, groups.pop(quick))
    items[:] = [item for group in groups for item in group]


@pytest.fixture(scope="session")
def programs():  # type: ignore[no-untyped-def]
    """The shipped programs, checked against the shipped catalogue."""
    from policies.catalogue import load_catalogue
    from policies.decision import DEFAULT_POLICY_DIR
    from policies.programs import ProgramRegistry

    return ProgramRegistry.load(DEFAULT_POLICY_DIR / "programs", load_catalogue()[0])
