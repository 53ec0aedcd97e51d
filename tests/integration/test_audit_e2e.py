"""The audit log over real processes: no gaps, both sides log, nodes cosign, evidence verifies offline."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import httpx
import pytest

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS
from client.sdk import GatewayClient
from exchange.events import subjects_digest
from xgate.pseudonym import Pseudonymiser, load_key

pytestmark = pytest.mark.integration


def _people(federation, start: int, n: int) -> list[str]:
    import csv

    with (federation.data_dir / "tax.csv").open() as handle:
        people = [row["national_id"] for row in csv.DictReader(handle)]
    return people[1500 + start : 1500 + start + n]


def _http(federation, label: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {federation.api_keys[label]}"} if label else {}
    import ssl

    return httpx.Client(
        base_url=federation.gateway_url, headers=headers, verify=ssl.create_default_context(cafile=federation.ca_cert)
    )


def _count(officer: httpx.Client, **filters: str) -> int:
    total, offset = 0, 0
    while True:
        page = officer.get("/v1/audit/entries", params={**filters, "offset": offset, "limit": 500}).json()
        total += len(page["entries"])
        if page["next_offset"] is None:
            return total
        offset = page["next_offset"]


def test_every_request_is_logged_without_gaps(federation):
    with (
        _http(federation, "officer") as officer,
        _http(federation, "caseworker_silver") as caller,
        _http(federation, None) as anonymous,
    ):
        before = _count(officer, kind="request", user="cw-li")
        before_anon = _count(officer, kind="request", user="anonymous")
        statuses = [
            caller.get("/v1/programs").status_code,  # 200
            caller.post("/v1/checks", json={"program": "dibao"}).status_code,  # 400
            caller.get("/v1/audit/entries").status_code,  # 403: not an officer
            caller.post("/v1/checks", content=b"x" * (17 * 1024 * 1024)).status_code,  # 413
            caller.get("/v1/nodes").status_code,  # 200
        ]
        anon = [anonymous.get("/v1/programs").status_code, anonymous.post("/v1/checks", json={}).status_code]
        assert statuses == [200, 400, 403, 413, 200] and anon == [401, 401]
        # The oversized body is refused before authentication, so it is logged as anonymous.
        assert _count(officer, kind="request", user="cw-li") - before == len(statuses) - 1
        assert _count(officer, kind="request", user="anonymous") - before_anon == len(anon) + 1


def test_check_is_logged_on_both_sides_and_cosigned(federation, tmp_path):
    ids = _people(federation, 0, 12)
    with GatewayClient(
        federation.gateway_url,
        federation.api_keys["caseworker"],
        Pseudonymiser(load_key(federation.pseudonym_key)),
        verify=str(federation.ca_cert),
        signer=federation.signer("caseworker"),
    ) as client:
        result = client.check("dibao", ids, "dibao", LEGAL_BASIS["dibao"], "audit-1", approval_ref=DEV_APPROVAL_REF)
        pseudonym = client._pseudonymiser.pseudonym(ids[0])
    with _http(federation, "officer") as officer:
        entries = officer.get("/v1/audit/entries", params={"request_id": result.request_id}).json()["entries"]
        kinds = [e["record"]["kind"] for e in entries]
        assert kinds.count("policy_decision") == 1 and kinds.count("result") == 1
        node_entries = [e["record"] for e in entries if e["record"]["kind"] == "node_response"]
        assert {e["metadata"]["node"] for e in node_entries} == {"tax", "hrss", "civil_affairs", "household"}
        for record in node_entries:
            # The gateway's entry holds the node's own leaf hash at the node's own index.
            node_db = federation.node_dir(record["metadata"]["node"]) / "audit.sqlite"
            with sqlite3.connect(f"file:{node_db}?mode=ro", uri=True) as conn:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                assert tables, "node audit database is empty"
            assert len(record["digests"]["node_entry"]) == 64
        accesses = officer.get(f"/v1/subjects/{pseudonym}/accesses").json()["accesses"]
        mine = [a for a in accesses if a.get("request_id") == result.request_id]
        assert [(a["kind"], a["decision"], a["outcome"]) for a in mine] == [("policy_decision", "allow", "answered")]
        result_entry = next(e["record"] for e in entries if e["record"]["kind"] == "result")
        assert result_entry["subjects"] == []  # bound by digest to the decision entry's list instead
        decision_entry = next(e["record"] for e in entries if e["record"]["kind"] == "policy_decision")
        assert result_entry["digests"]["subjects"] == subjects_digest(decision_entry["subjects"])

        cosigned = officer.post("/v1/audit/checkpoints/cosign").json()
        assert set(cosigned["cosigned_by"]) == set(federation.agencies) and cosigned["refused"] == {}
        again = officer.post("/v1/audit/checkpoints/cosign").json()  # consistency from the last cosigned size
        assert set(again["cosigned_by"]) == set(federation.agencies) and again["size"] > cosigned["size"]

    db, pub = federation.gateway_dir / "audit.sqlite", federation.gateway_dir / "audit.pub.pem"
    cli = [sys.executable, "-m", "app.cli", "audit"]
    verified = subprocess.run([*cli, "verify-log", "--db", str(db), "--key", str(pub)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr + verified.stdout
    bundle = tmp_path / "bundle.json"
    made = subprocess.run(
        [*cli, "bundle", result.request_id, "--db", str(db), "--out", str(bundle)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    ok = subprocess.run([*cli, "verify-bundle", str(bundle), "--key", str(pub)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    tampered = json.loads(bundle.read_text())
    text = json.dumps(tampered).replace(result.request_id[:8], "deadbeef", 1)
    (tmp_path / "tampered.json").write_text(text)
    bad = subprocess.run(
        [*cli, "verify-bundle", str(tmp_path / "tampered.json"), "--key", str(pub)], capture_output=True, text=True
    )
    assert bad.returncode != 0


def test_only_security_officers_read_the_log(federation):
    with _http(federation, "caseworker") as caseworker, _http(federation, "officer") as officer:
        denied = caseworker.get("/v1/audit/alerts")
        assert denied.status_code == 403 and denied.json()["error"] == "policy_denied"
        assert officer.get("/v1/audit/alerts").status_code == 200
