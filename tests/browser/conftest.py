"""Browser tests drive Debian's system Chromium through Playwright (no browser is ever downloaded).

Without Chromium (or without the playwright package) every test marked `browser` is skipped with
a loud reason, and the terminal summary says plainly that the browser tests did not run: this is
the one place in the suite where a skip is accepted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.harness import CHROMIUM_ARGS, ConsoleFederation, chromium_works, find_chromium, running_federation
from tests.browser.summary import BANNER, pytest_terminal_summary  # noqa: F401 (hook)


def _why_not() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"{BANNER}: the playwright package is not installed (pip install -e '.[dev]')"
    path = find_chromium()
    if path is None:
        return f"{BANNER}: chromium not found (apt-get install chromium, or set XGATE_CHROMIUM)"
    if not chromium_works(path):
        return f"{BANNER}: {path} does not start"
    return None


_REASON = _why_not()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.skip(reason=_REASON))


@pytest.fixture(scope="module")
def console_fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFederation]:
    """A real federation with traffic: allowed checks, refused checks (an alert), a cosigned checkpoint."""
    with running_federation(tmp_path_factory.mktemp("console-fed")) as cf:
        cf.allowed_check(3, mode="he", case="C-CONSOLE-HE")
        cf.allowed_check(4, mode="plaintext", case="C-CONSOLE-PT")
        assert cf.refused_check(purpose="pension_survival", case="C-WRONG-PURPOSE") == 403
        for i in range(5):  # five policy denials within ten minutes: the repeated_denials rule fires
            assert cf.refused_check(legal_basis="SAR-2014-art-99", case=f"C-DENY-{i}") == 403
        cf.cosign()
        yield cf


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = find_chromium()
    assert path is not None
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        # A persistent context is how Playwright takes a fresh --user-data-dir of our choosing.
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=path,
            headless=True,
            args=CHROMIUM_ARGS,
            ignore_https_errors=True,  # the gateway's certificate is from the dev federation's own CA
            viewport={"width": 1366, "height": 860},
            env={**os.environ, "HOME": str(profile)},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
