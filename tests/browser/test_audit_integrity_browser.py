"""The console shows the witnesses' answers as they are, and a damaged log as what it is.

A real federation (nodes and gateway processes); then a second gateway started on a truncated
copy of the first one's audit log, naming the same nodes as witnesses: it finds the log truncated,
and its console says so on the Integrity page and as an alert.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.devfed import start_gateway, write_gateway_config
from tests.audit_tamper import truncated_copy
from tests.browser.harness import ConsoleFederation, running_federation

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def cf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleFederation]:
    with running_federation(tmp_path_factory.mktemp("integrity-fed"), people=300, applicants=20) as fed:
        with fed.http() as officer:
            for _ in range(6):
                assert officer.get("/v1/programs").status_code == 200
        yield fed


def _sign_in(page: Any, cf: ConsoleFederation, url: str) -> None:
    page.goto(f"{url}/console/")
    page.get_by_label("API key").fill(cf.fed.api_keys["officer"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#who-user")


def test_witness_answers_on_the_integrity_page(page: Any, cf: ConsoleFederation) -> None:
    _sign_in(page, cf, cf.url)
    page.get_by_role("link", name="Integrity").click()
    page.get_by_role("button", name="Publish and ask the witnesses").click()
    rows = page.locator("#cosign-result tbody tr")
    rows.first.wait_for()
    assert rows.count() == len(cf.fed.agencies)
    assert all("Cosigned" in rows.nth(i).inner_text() for i in range(rows.count()))
    assert page.locator("#log-compromised").count() == 0


def test_a_gateway_on_a_truncated_log_says_so(page: Any, cf: ConsoleFederation, tmp_path: Path) -> None:
    with cf.http() as officer:
        size = officer.post("/v1/audit/checkpoints/cosign").json()["size"]
    copy = tmp_path / "cut.audit.sqlite"
    truncated_copy(cf.audit_db(), copy, keep=size // 2)
    config = write_gateway_config(
        cf.fed, config_path=cf.fed.gateway_dir / "gw-cut.toml", witnesses=True, audit_db=str(copy),
        state_dir=str(tmp_path / "state"),
    )  # fmt: skip
    url = start_gateway(cf.fed, cf.supervisor, config_path=config, name="gw-cut", register_approval=False)
    _sign_in(page, cf, url)
    page.get_by_role("link", name="Integrity").click()
    banner = page.locator("#log-compromised")
    banner.wait_for()
    assert "Audit log truncated" in banner.inner_text() and "log truncated" in banner.inner_text()
    page.get_by_role("link", name="Alerts").click()
    card = page.locator("section[data-rule='log_integrity']")
    card.wait_for()
    text = card.inner_text()
    assert "Audit log damaged" in text and "Truncated" in text and "witness" in text
    page.screenshot(path=str(tmp_path / "console-log-truncated.png"), full_page=True)
