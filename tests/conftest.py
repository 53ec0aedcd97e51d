"""Shared fixtures: repository paths and one HE key pair per test session (keygen ~40 ms)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Loaded here (not only in tests/browser/conftest.py) so the xdist controller prints the loud
# "BROWSER TESTS DID NOT RUN" banner when Chromium is missing.
pytest_plugins = ["tests.browser.summary"]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def requester_keys():  # type: ignore[no-untyped-def]
    from crypto.he import RequesterKeys

    return RequesterKeys.generate()


@pytest.fixture(scope="session")
def public_context(requester_keys):  # type: ignore[no-untyped-def]
    from crypto.he import PublicContext

    return PublicContext(requester_keys.public_context)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long files first. `make test` runs `-n 2 --dist loadfile`: xdist hands whole files to the two
    workers in collection order, so long integration files collected last left one worker running
    them alone for minutes at the end. A stable sort keeps every file's own order intact."""
    items.sort(key=lambda item: 0 if item.path.parent.name in ("integration", "browser") else 1)
