"""The subject access report (`xgate audit report`) as a person sees it: opened in headless Chromium."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app
from audit.checkpoints import Signer, generate_key, save_keypair
from audit.records import Actor, AuditRecord
from audit.store import AuditLog
from audit.testing import ORIGIN
from xgate.pseudonym import Pseudonymiser, id_checksum, write_key

pytestmark = pytest.mark.browser
T0 = datetime(2026, 3, 4, 1, 0, tzinfo=UTC)


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, str]:
    person = "11010119900307123" + id_checksum("11010119900307123")
    key_file = tmp_path / "pseudonym.key"
    subject = Pseudonymiser(write_key(key_file)).pseudonym(person)
    key = generate_key()
    _, pub = save_keypair(key, tmp_path / "log")
    db = tmp_path / "audit.db"
    why = {"program": "dibao", "purpose": "dibao", "legal_basis": "SAR-2014-art-12"}

    def rec(kind: str, minutes: int, user: str, agency: str, rid: str, **kw: Any) -> AuditRecord:
        actor = Actor(user=user, agency=agency, role="caseworker")
        return AuditRecord(kind=kind, time=T0 + timedelta(minutes=minutes), actor=actor, request_id=rid, **kw)

    with AuditLog.open(db, signer=Signer(ORIGIN, key), origin=ORIGIN) as log:
        log.append_many(
            [
                rec("policy_decision", 0, "cw-zhang", "civil_affairs", "r1", decision="allow", subjects=(subject,),
                    case_id="C-1", **why),
                rec("result", 1, "cw-zhang", "civil_affairs", "r1", **why),
                rec("policy_decision", 90, "cw-li", "civil_affairs", "r2", decision="deny", subjects=(subject,),
                    case_id="C-2", **why),
            ]
        )  # fmt: skip
        log.publish_checkpoint()
        log.append(rec("policy_decision", 200, "cw-chen", "hrss", "r3", decision="allow", subjects=(subject,), **why))
    out = tmp_path / "report.html"
    r = CliRunner().invoke(
        app,
        ["audit", "report", "--db", str(db), "--key", str(pub), "--out", str(out), "--subject-id", person,
         "--pseudonym-key", str(key_file), "--since", "2026-03-01", "--until", "2026-04-01"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return out, person


def test_report_renders_who_when_why_and_the_evidence(page: Any, report: tuple[Path, str], tmp_path: Path) -> None:
    path, person = report
    page.goto(path.as_uri())
    assert page.locator("h1").inner_text() == "Who accessed this person's data"
    assert page.locator("#access-count").inner_text() == "3"
    rows = page.locator("#accesses tbody tr")
    assert rows.count() == 3
    first = rows.nth(0).inner_text()
    assert "2026-03-04 09:00:00 CST" in first and "cw-zhang" in first and "civil_affairs" in first
    assert "SAR-2014-art-12" in first and "Answered" in first and "proof verified" in first
    assert "Refused by policy" in rows.nth(1).inner_text()
    assert "not yet sealed" in rows.nth(2).inner_text()  # recorded after the checkpoint
    # The evidence opens on demand: the entries' leaf hashes and inclusion proofs.
    rows.nth(0).locator("summary").click()
    evidence = rows.nth(0).locator("details").inner_text()
    assert "entry 0 (policy_decision)" in evidence and "entry 1 (result)" in evidence
    assert page.locator("#checkpoint-size").inner_text() == "3 entries"
    assert "\u2014 " + ORIGIN in page.locator("#checkpoint-note").inner_text()
    body = page.locator("body").inner_text()
    assert person not in body and person[:6] + "********" + person[-4:] in body
    shot = tmp_path / "audit-report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
