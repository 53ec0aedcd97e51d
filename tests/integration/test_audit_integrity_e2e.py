"""A real gateway process verifies its log before it signs (issue 14 item 2), and stops promptly.

Variant gateways run beside the federation's own one, on a copy of its audit log cut back (or on
a log forged under another key), naming the federation's nodes as witnesses: the nodes remember
what they cosigned of the real log, so the variant must find its log truncated, refuse to sign,
raise an alert and refuse checks with 503. Nothing here changes what the witnesses remember.
"""

from __future__ import annotations

import signal
import sqlite3
import ssl
import time
from pathlib import Path

import httpx
import pytest

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, start_gateway, write_gateway_config
from app.launcher import Supervisor
from audit.checkpoints import Signer, generate_key
from audit.store import AuditLog
from audit.testing import record
from client.subjects import read_subjects
from gateway.audit import GATEWAY_LOG_ORIGIN
from tests.audit_tamper import truncated_copy

pytestmark = pytest.mark.integration


def _http(federation, url: str, label: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {federation.api_keys[label]}"},
        verify=ssl.create_default_context(cafile=federation.ca_cert),
        timeout=30,
    )


def _checkpoints(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])


def _variant(federation, supervisor: Supervisor, tmp_path: Path, name: str, db: Path) -> str:
    config = write_gateway_config(
        federation,
        config_path=federation.gateway_dir / f"{name}.toml",
        witnesses=True,
        audit_db=str(db),
        state_dir=str(tmp_path / f"{name}.state"),
    )
    # The gateway refuses every action on a damaged log, registering the dev approval included.
    return start_gateway(federation, supervisor, config_path=config, name=name, register_approval=False)


def _check_body(federation, n: int = 3) -> dict[str, object]:
    from xgate.pseudonym import Pseudonymiser, load_key

    pseudo = Pseudonymiser(load_key(federation.pseudonym_key))
    ids = read_subjects(federation.applicants)[296 : 296 + n]
    return {
        "program": "dibao",
        "purpose": "dibao",
        "legal_basis": LEGAL_BASIS["dibao"],
        "case_id": "integrity-1",
        "approval_ref": DEV_APPROVAL_REF,
        "mode": "plaintext",
        "pseudonyms": [pseudo.pseudonym(i) for i in ids],
    }


def _assert_refuses(federation, url: str, db: Path, reason: str) -> None:
    signed_at_start = _checkpoints(db)
    with _http(federation, url, "officer") as officer, _http(federation, url, "caseworker") as caseworker:
        answer = officer.get("/v1/audit/alerts")
        assert answer.status_code == 200, answer.text  # once seen without `alerts` under load: say what came
        alerts = answer.json()["alerts"]
        mine = [a for a in alerts if a["rule"] == "log_integrity"]
        assert [a["reason"] for a in mine] == [reason], alerts
        refused = caseworker.post("/v1/checks", json=_check_body(federation))
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert body["error"] == "audit_log_compromised" and body["details"]["reason"] == reason
        assert body["request_id"] == refused.headers["X-Request-Id"]
        for path in ("/v1/audit/checkpoints", "/v1/audit/checkpoints/cosign"):  # refuses to sign
            answer = officer.post(path)
            assert answer.status_code == 503 and answer.json()["error"] == "audit_log_compromised", answer.text
        # The refused check is on record under the id the caseworker was given.
        entries = officer.get("/v1/audit/entries", params={"request_id": body["request_id"]}).json()["entries"]
        assert [(e["record"]["kind"], e["record"]["metadata"]["status"]) for e in entries] == [("request", 503)]
    assert _checkpoints(db) == signed_at_start


def test_gateway_started_on_a_truncated_log_refuses_to_sign(federation, tmp_path: Path) -> None:
    with _http(federation, federation.gateway_url, "officer") as officer:
        for _ in range(6):  # some traffic, so that there is something to cut
            assert officer.get("/v1/programs").status_code == 200
        cosigned = officer.post("/v1/audit/checkpoints/cosign").json()
        assert set(cosigned["cosigned_by"]) == set(federation.agencies), cosigned
        assert cosigned["size"] >= 6
    copy = tmp_path / "truncated.audit.sqlite"
    truncated_copy(federation.gateway_dir / "audit.sqlite", copy, keep=cosigned["size"] // 2)
    with Supervisor(log_dir=tmp_path) as supervisor:
        url = _variant(federation, supervisor, tmp_path, "gw-truncated", copy)
        _assert_refuses(federation, url, copy, "truncated")
    service_log = (tmp_path / "gw-truncated.log").read_text()
    assert "audit_log_compromised" in service_log and "log truncated" in service_log
    # The witnesses were only asked, never made to cosign the cut log: the real gateway carries on.
    with _http(federation, federation.gateway_url, "officer") as officer:
        again = officer.post("/v1/audit/checkpoints/cosign").json()
        assert set(again["cosigned_by"]) == set(federation.agencies) and again["refused"] == {}, again


def test_gateway_started_on_a_log_forged_with_another_key_refuses_to_sign(federation, tmp_path: Path) -> None:
    forged = tmp_path / "forged.audit.sqlite"
    forger = Signer(GATEWAY_LOG_ORIGIN, generate_key())
    with AuditLog.open(forged, signer=forger, origin=GATEWAY_LOG_ORIGIN, writer="thread") as log:
        log.append_many([record(i) for i in range(50)])
        log.publish_checkpoint()
    with Supervisor(log_dir=tmp_path) as supervisor:
        url = _variant(federation, supervisor, tmp_path, "gw-forged", forged)
        _assert_refuses(federation, url, forged, "resigned")
    assert "not signed by this gateway's key" in (tmp_path / "gw-forged.log").read_text()


def test_gateway_stops_within_five_seconds_of_sigterm(federation, tmp_path: Path) -> None:
    config = write_gateway_config(federation, config_path=federation.gateway_dir / "gw-stop.toml")
    with Supervisor(log_dir=tmp_path) as supervisor:
        start_gateway(federation, supervisor, config_path=config, name="gw-stop")
        child = supervisor.children[-1]
        url = str(child.announcement["url"])
        with _http(federation, url, "officer") as officer:  # a kept-alive connection stays open
            assert officer.get("/v1/programs").status_code == 200
            assert officer.get("/v1/audit/alerts").status_code == 200
            started = time.monotonic()
            child.process.send_signal(signal.SIGTERM)
            child.process.wait(30)
            took = time.monotonic() - started
        assert child.process.returncode is not None
    assert took < 5.0, f"gateway took {took:.1f} s to stop after SIGTERM"


def test_officer_answers_both_questions_with_one_command_each(federation, client, tmp_path: Path) -> None:
    """'Who accessed this person, when and why?' and 'every refused request today', from the CLI
    against the running gateway; the national id is pseudonymised on the officer's machine."""
    import json
    import os
    import subprocess
    import sys

    person = read_subjects(federation.applicants)[292]
    result = client.check("dibao", [person], "dibao", LEGAL_BASIS["dibao"], "who-1", approval_ref=DEV_APPROVAL_REF)
    with httpx.Client(
        base_url=federation.gateway_url, verify=ssl.create_default_context(cafile=federation.ca_cert)
    ) as anon:
        refused = anon.get("/v1/programs")  # no API key: 401, with an id the caller can quote
    assert refused.status_code == 401 and refused.json()["request_id"] == refused.headers["X-Request-Id"]
    env = {**os.environ, "XGATE_API_KEY": federation.api_keys["officer"]}
    base = [sys.executable, "-m", "app.cli", "audit", "query", "--gateway", federation.gateway_url,
            "--ca", str(federation.ca_cert), "--format", "json"]  # fmt: skip
    who = subprocess.run(
        [*base, "--subject-id", person, "--pseudonym-key", str(federation.pseudonym_key), "--since", "today"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert who.returncode == 0, who.stderr
    rows = json.loads(who.stdout)
    mine = [r for r in rows if r["request_id"] == result.request_id]
    assert [(r["user"], r["agency"], r["purpose"], r["legal_basis"], r["outcome"]) for r in mine] == [
        ("cw-zhang", "civil_affairs", "dibao", LEGAL_BASIS["dibao"], "answered")
    ]
    today = subprocess.run(
        [*base, "--refused", "--since", "today"], capture_output=True, text=True, env=env, timeout=120
    )
    assert today.returncode == 0, today.stderr
    refusals = {r["request_id"]: r for r in json.loads(today.stdout)}
    assert refusals[refused.headers["X-Request-Id"]]["status"] == 401
    assert all(400 <= r["status"] <= 499 for r in refusals.values())
    # The person's report, built from what the gateway answers and verified here with the log key.
    with _http(federation, federation.gateway_url, "officer") as officer:
        assert officer.post("/v1/audit/checkpoints/cosign").status_code == 200
    page = tmp_path / "report.html"
    report = subprocess.run(
        [sys.executable, "-m", "app.cli", "audit", "report", "--gateway", federation.gateway_url,
         "--ca", str(federation.ca_cert), "--key", str(federation.gateway_dir / "audit.pub.pem"),
         "--subject-id", person, "--pseudonym-key", str(federation.pseudonym_key), "--since", "today",
         "--out", str(page)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr + report.stdout
    html = page.read_text()
    assert "cw-zhang" in html and "proof verified" in html and person not in html
    # The national id never reached the gateway: not in its audit log, not in its service log.
    for db in federation.gateway_dir.glob("audit.sqlite*"):  # the database and its WAL
        assert person.encode() not in db.read_bytes()
    assert person not in (federation.log_dir / "gateway.log").read_text()
