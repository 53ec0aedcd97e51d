"""The console in headless Chromium against a real gateway process (and real nodes).

Order matters only for the last test, which tampers with the gateway's audit store.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.browser.harness import ConsoleFederation, sign_in
from tests.conftest import VECTORS

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def _first_index(cf: ConsoleFederation, **filters: str) -> int:
    with cf.http() as h:
        r = h.get("/v1/audit/entries", params={**filters, "limit": 1, "order": "desc"})
        r.raise_for_status()
        return int(r.json()["entries"][0]["index"])


def _apply_filters(page: Any, **fields: str) -> None:
    page.get_by_role("button", name="Reset").click()
    for label, value in fields.items():
        control = page.get_by_label(label, exact=True)
        if control.evaluate("el => el.tagName") == "SELECT":
            control.select_option(label=value)
        else:
            control.fill(value)
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_selector("#page-status")


def test_sign_in_shows_identity_and_sign_out_forgets_the_key(page: Any, console_fed: ConsoleFederation) -> None:
    sign_in(page, console_fed)
    assert page.locator("#who-user").inner_text() == "so-zhao"
    assert page.locator("#who-role").inner_text().lower() == "security officer"
    assert page.locator("#page-title").inner_text() == "Exchanges"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_selector("#api-key")
    assert page.evaluate("sessionStorage.length") == 0
    page.goto(f"{console_fed.url}/console/#/alerts")  # a deep link without a key lands on sign-in
    page.wait_for_selector("#api-key")


def test_sign_in_refuses_other_roles_and_bad_keys(page: Any, console_fed: ConsoleFederation) -> None:
    sign_in(page, console_fed, "caseworker")
    page.wait_for_selector("#signin-status .alert-bad")
    assert "security officers and administrators" in page.locator("#signin-status").inner_text()
    page.get_by_label("API key").fill("xgk_000000000000_" + "A" * 43)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#signin-status .alert-bad:has-text('not accepted')")
    assert page.evaluate("sessionStorage.length") == 0


def test_filter_the_log_then_open_an_entry_and_see_its_proof_verified(
    page: Any, console_fed: ConsoleFederation
) -> None:
    sign_in(page, console_fed)
    _apply_filters(page, Kind="policy_decision", Decision="Allowed")
    rows = page.locator("table.entries tbody tr")
    assert rows.count() >= 2
    for text in rows.all_inner_texts():
        assert "policy_decision" in text and "Allowed" in text and "Refused" not in text
    assert "decision=allow" in page.url  # the filter is in the address: shareable, back-button safe
    rows.first.get_by_role("link").click()
    page.wait_for_selector("#browser-verdict .badge:has-text('Verified')")
    assert "Verified" in page.locator("#server-verdict .verdict-badge").inner_text()
    checks = page.locator("#browser-verdict .checks").inner_text()
    assert "Inclusion proof" in checks and "FAIL" not in checks
    assert "Ed25519 signature" in checks  # the checkpoint signature was checked in the browser too
    assert page.locator("#entry-decision").inner_text().split()[-1] == "Allowed"


def test_a_refused_request_and_its_reason(page: Any, console_fed: ConsoleFederation) -> None:
    sign_in(page, console_fed)
    _apply_filters(page, Decision="Refused")
    texts = page.locator("table.entries tbody tr").all_inner_texts()
    assert len(texts) >= 5 and all("Refused" in t for t in texts)
    # Denials carry their readable reasons; refusals before the engine are decisions too.
    assert any("no permit matched" in t for t in texts)
    assert any("is not a purpose of program" in t for t in texts)
    page.locator("table.entries tbody tr").first.get_by_role("link").click()
    page.wait_for_selector("#entry-reason")
    assert page.locator("#entry-decision").inner_text().split()[-1] == "Refused"
    assert "no permit matched" in page.locator("#entry-reason").inner_text()  # readable reasons first
    why = page.wait_for_selector("#why-reasons li")
    assert why is not None
    reasons = page.locator("#why-reasons").inner_text()
    assert "no permit matched" in reasons  # the wrong legal basis matches no agreement
    # The wrong-purpose request's HTTP request entry is logged as well.
    page.goto(f"{console_fed.url}/console/#/exchanges?kind=request&q=policy_denied")
    page.wait_for_selector("#page-status")
    assert any("Refused 403" in t for t in page.locator("table.entries tbody tr").all_inner_texts())


def test_an_alert_with_the_entries_behind_it(page: Any, console_fed: ConsoleFederation) -> None:
    sign_in(page, console_fed)
    page.get_by_role("link", name="Alerts").click()
    card = page.locator("section[data-rule='repeated_denials']")
    card.wait_for()
    assert "cw-zhang" in card.inner_text()
    rows = card.locator("tbody tr")
    assert rows.count() >= 5
    rows.first.get_by_role("link").click()
    page.wait_for_selector("#entry-decision:has-text('Refused')")


def test_keyboard_navigation_reaches_every_section(page: Any, console_fed: ConsoleFederation) -> None:
    sign_in(page, console_fed)
    page.reload()  # a fresh load: focus starts at the top of the document
    page.wait_for_selector("#page-title")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "page-title"
    page.reload()
    page.wait_for_selector("#page-title")
    for _ in range(30):  # tab forward to the Integrity link, then follow it with Enter
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.section") == "integrity":
            break
    else:
        pytest.fail("Tab never reached the Integrity link")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # a visible focus ring
    page.keyboard.press("Enter")
    page.wait_for_selector("#page-title:has-text('Integrity')")
    assert page.evaluate("document.activeElement.id") == "page-title"  # focus moved to the new page
    assert page.locator("#nav a[aria-current='page']").inner_text() == "Integrity"
    for control in page.locator("main input, main select, main textarea").all():
        assert control.evaluate("el => !!(el.labels && el.labels.length)")  # every control is labelled


def test_subject_lookup_shows_who_accessed_a_pseudonym(page: Any, console_fed: ConsoleFederation) -> None:
    subject = console_fed.pseudonym(console_fed.people[0])  # checked in the first (HE) check
    sign_in(page, console_fed)
    page.get_by_role("link", name="Subject lookup").click()
    page.get_by_label("Pseudonym").fill(subject)
    page.get_by_role("button", name="Look up").click()
    page.wait_for_selector("#subject-summary")
    text = page.locator("#subject-result").inner_text()
    assert "civil_affairs" in text and "dibao" in text and "SAR-2014-art-12" in text


def test_federation_policies_and_training_pages(page: Any, console_fed: ConsoleFederation) -> None:
    sign_in(page, console_fed)
    page.get_by_role("link", name="Federation").click()
    page.wait_for_selector("tr[data-agency='tax']")
    assert page.locator("text=5 / 5").count() == 1
    assert "tax.monthly_income" in page.locator("tr[data-agency='tax']").inner_text()
    assert "Valid" in page.locator("tr[data-agency='tax']").inner_text()
    page.get_by_role("link", name="Policies").click()
    page.get_by_label("Data element", exact=True).select_option("tax.monthly_income")
    page.get_by_role("button", name="Who can?").click()
    page.wait_for_selector("#whocan-result table")
    assert "DSA-2026-TAX-CA-01" in page.locator("#whocan-result").inner_text()
    page.get_by_role("link", name="Training").click()
    page.wait_for_selector("text=Privacy budget per dataset")
    assert "medical.claims_2025" in page.locator("main").inner_text()


def test_browser_merkle_verifier_passes_the_rfc6962_vectors(page: Any, console_fed: ConsoleFederation) -> None:
    probes = json.loads((VECTORS / "rfc6962_vectors.json").read_text())["inclusion_probes"]
    page.goto(f"{console_fed.url}/console/")
    results = page.evaluate(
        """async (probes) => {
          const m = await import('/console/js/merkle.js');
          const out = [];
          for (const p of probes) {
            try {
              await m.verifyInclusion(p.leafIdx, p.treeSize, m.hexToBytes(p.leafHash),
                (p.proof || []).map(m.hexToBytes), m.hexToBytes(p.root));
              out.push(false);
            } catch (e) { out.push(true); }
          }
          return out;
        }""",
        probes,
    )
    wrong = [p["file"] for p, err in zip(probes, results, strict=True) if err != p["wantErr"]]
    assert not wrong, f"browser verifier disagrees with the vectors on {wrong}"


def test_tampered_entry_is_flagged_not_verified(page: Any, console_fed: ConsoleFederation) -> None:
    index = _first_index(console_fed, kind="policy_decision", decision="allow", order="asc")
    console_fed.tamper(index)
    sign_in(page, console_fed)
    page.goto(f"{console_fed.url}/console/#/entry/{index}")
    page.wait_for_selector("#browser-verdict .verdict-badge:has-text('NOT verified')")
    assert "NOT verified" in page.locator("#server-verdict .verdict-badge").inner_text()
    assert "altered" in page.locator("#tamper-alert").inner_text()
    browser_checks = page.locator("#browser-verdict .checks").inner_text()
    assert re.search(r"FAIL\s+Leaf hash", browser_checks) and re.search(r"FAIL\s+Inclusion proof", browser_checks)
    page.goto(f"{console_fed.url}/console/#/exchanges?kind=policy_decision&decision=allow")
    row = page.locator(f"table.entries tbody tr[data-index='{index}']")
    row.wait_for()
    assert "ALTERED" in row.inner_text()
    page.get_by_role("link", name="Integrity").click()
    page.get_by_role("button", name="Verify whole log").click()
    page.wait_for_selector("#verify-result :text('Log does NOT verify')", timeout=60_000)
    assert f"#{index}" in page.locator("#altered-list").inner_text()
    assert "altered" in page.locator("#verify-result").inner_text()
