"""Shared fixtures: repository paths and one HE key pair per test session (keygen ~40 ms)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.cli import PRIVATE_UMASK

# As the `xgate` entry point does for itself and every process it starts (app/cli.py): files the
# suite makes (stores, ledgers, audit logs it hands to real node and gateway processes) are private,
# which those processes' preflight requires. Tests of a permissive umask set one themselves.
os.umask(PRIVATE_UMASK)

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
    """Slow files first (a stable sort, so each file's tests stay together and in order).

    xdist's `--dist loadfile` hands out files in collection order; a file of minute-long Flower jobs
    handed out last would run alone while the other workers idle, so those go out first, and the
    longest (`slow(first=True)`: five minutes of the deployment across hosts) before them.
    """

    def rank(item: pytest.Item) -> int:
        slow = item.get_closest_marker("slow")
        return 2 if slow is None else 0 if slow.kwargs.get("first") else 1

    items.sort(key=rank)


@pytest.fixture(scope="session")
def programs():  # type: ignore[no-untyped-def]
    """The shipped programs, checked against the shipped catalogue."""
    from policies.catalogue import load_catalogue
    from policies.decision import DEFAULT_POLICY_DIR
    from policies.programs import ProgramRegistry

    return ProgramRegistry.load(DEFAULT_POLICY_DIR / "programs", load_catalogue()[0])
