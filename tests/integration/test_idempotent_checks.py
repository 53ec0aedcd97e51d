"""Retried checks over real processes: answered once, charged once (issue 18, item 1, client half).

A gateway of its own (own state: budgets, idempotency store, audit log) in the shared federation:

* the same check sent twice with one Idempotency-Key is computed once (one `result` entry),
  charged once (one evaluation per subject in the gateway's budgets.sqlite), and the retry gets the
  first answer byte for byte with `Idempotent-Replayed: true`;
* the key reused for another body, and a malformed key, are refused and charge nothing;
* the SDK given a dead gateway (a closed port) first and the live one second completes on the
  second, charging each subject once;
* two replicas on one PostgreSQL database (`pg_url`): the check answered by one and retried on the
  other is replayed there, computed once and charged once in the shared budget.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import sqlite3
import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, start_gateway, write_gateway_config
from client.sdk import GatewayClient
from client.subjects import read_subjects
from crypto.he import RequesterKeys
from tests.postgres import as_url
from xgate.pseudonym import Pseudonymiser, load_key

pytestmark = pytest.mark.integration
NAME = "gw-idem"


@contextmanager
def _closed_port() -> Iterator[int]:
    """A port held bound, never listening, for the block: connecting is refused, and no other
    process's bind can take it meanwhile (a port probed free and closed again could be)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def _tls(federation) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return ssl.create_default_context(cafile=str(federation.ca_cert))


@pytest.fixture(scope="module")
def gateway(federation) -> str:  # type: ignore[no-untyped-def]
    config = write_gateway_config(federation, config_path=federation.gateway_dir / f"{NAME}.toml")
    return start_gateway(federation, federation.supervisor, config_path=config, name=NAME)


def _charges(federation, pseudonyms: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Evaluations recorded per subject in the gateway's own probing budget."""
    path = federation.gateway_dir / f"{NAME}.state" / "budgets.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = dict(db.execute("SELECT subject, times FROM probe_windows WHERE program = 'dibao'").fetchall())
    return {p: len(rows[p].split(",")) if p in rows else 0 for p in pseudonyms}


def _results(federation, url: str) -> int:  # type: ignore[no-untyped-def]
    """How many checks the gateway computed (its `result` audit entries), as the officer reads them."""
    with httpx.Client(
        base_url=url,
        verify=_tls(federation),
        headers={"Authorization": f"Bearer {federation.api_keys['officer']}"},
    ) as officer:
        r = officer.get("/v1/audit/entries", params={"kind": "result", "limit": 1000})
        assert r.status_code == 200, r.text
        return len(r.json()["entries"])


def _payload(federation, ids: list[str], case_id: str = "case-idem") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    pseudo = Pseudonymiser(load_key(federation.pseudonym_key))
    body = {
        "program": "dibao",
        "purpose": "dibao",
        "legal_basis": LEGAL_BASIS["dibao"],
        "case_id": case_id,
        "approval_ref": DEV_APPROVAL_REF,
        "mode": "he",
        "pseudonyms": [pseudo.pseudonym(i) for i in ids],
        "public_context": base64.b64encode(RequesterKeys.generate().public_context).decode("ascii"),
    }
    return federation.signed_check("caseworker", body)  # type: ignore[no-any-return]


def test_a_retried_check_is_replayed_computed_once_and_charged_once(federation, gateway: str) -> None:  # type: ignore[no-untyped-def]
    payload = _payload(federation, read_subjects(federation.applicants)[100:104])
    key = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {federation.api_keys['caseworker']}", "Idempotency-Key": key}
    computed = _results(federation, gateway)
    with httpx.Client(base_url=gateway, verify=_tls(federation), timeout=120) as http:
        first = http.post("/v1/checks", json=payload, headers=headers)
        assert first.status_code == 200, first.text
        retried = http.post("/v1/checks", json=payload, headers=headers)
        assert retried.status_code == 200, retried.text
        assert retried.headers["Idempotent-Replayed"] == "true"
        assert retried.content == first.content  # the same masked result bytes, not a new computation
        assert _results(federation, gateway) == computed + 1
        assert _charges(federation, payload["pseudonyms"]) == dict.fromkeys(payload["pseudonyms"], 1)

        # The key reused for another body: refused, nothing computed or charged.
        other = http.post("/v1/checks", json={**payload, "case_id": "case-other"}, headers=headers)
        assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused", other.text
        assert key not in other.text
        # A malformed key: refused before anything runs.
        bad = http.post("/v1/checks", json=payload, headers={**headers, "Idempotency-Key": "k" * 256})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_idempotency_key", bad.text
    assert _results(federation, gateway) == computed + 1
    assert _charges(federation, payload["pseudonyms"]) == dict.fromkeys(payload["pseudonyms"], 1)

    # The gateway's entries for the check carry the key's digest, never the key.
    digest = hashlib.sha256(key.encode()).hexdigest()
    with httpx.Client(
        base_url=gateway,
        verify=_tls(federation),
        headers={"Authorization": f"Bearer {federation.api_keys['officer']}"},
    ) as officer:
        rid = first.headers["X-Request-Id"]
        entries = officer.get("/v1/audit/entries", params={"request_id": rid, "limit": 100}).json()["entries"]
    assert entries and all(e["record"]["digests"].get("idempotency_key") == digest for e in entries)
    assert key not in repr(entries)


def test_the_sdk_given_a_dead_gateway_first_completes_on_the_second(federation, gateway: str) -> None:  # type: ignore[no-untyped-def]
    ids = read_subjects(federation.applicants)[104:108]
    pseudo = Pseudonymiser(load_key(federation.pseudonym_key))
    keys = RequesterKeys.generate()
    with GatewayClient(gateway, federation.api_keys["caseworker"], pseudo, keys, verify=str(federation.ca_cert)) as c:
        c.register_context()  # registered beforehand: the check below is one request per gateway tried
    computed = _results(federation, gateway)
    with (
        _closed_port() as port,
        GatewayClient(
            [f"https://127.0.0.1:{port}", gateway], federation.api_keys["caseworker"], pseudo, keys,
            verify=str(federation.ca_cert), backoff_s=0.05,
            signer=federation.signer("caseworker"), identity=federation.identity("caseworker"),
        ) as client,
    ):  # fmt: skip
        result = client.check(
            "dibao", ids, "dibao", LEGAL_BASIS["dibao"], "case-failover", approval_ref=DEV_APPROVAL_REF
        )
        assert (result.gateway, result.attempts, result.replayed) == (gateway, 2, False)
        assert len(result.rows()) == len(ids)
    assert _results(federation, gateway) == computed + 1
    pseudonyms = [pseudo.pseudonym(i) for i in ids]
    assert _charges(federation, pseudonyms) == dict.fromkeys(pseudonyms, 1)


# -- two replicas on one PostgreSQL database: the retry lands on the other replica ------------------


@pytest.fixture(scope="module")
def replicas(federation, pg_url: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    configs = {
        name: write_gateway_config(
            federation,
            config_path=federation.gateway_dir / f"idem-{name}.toml",
            database=as_url(pg_url),
            replica=name,
        )
        for name in ("a", "b")
    }
    migrated = subprocess.run(
        [sys.executable, "-m", "app.cli", "gateway", "migrate", "--config", str(configs["a"])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    supervisor = federation.supervisor
    return {name: start_gateway(federation, supervisor, config_path=path, name=f"idem-{name}")
            for name, path in configs.items()}  # fmt: skip


def test_a_check_retried_on_the_other_replica_is_replayed_and_charged_once(federation, replicas, pg_url) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    payload = _payload(federation, read_subjects(federation.applicants)[108:111], case_id="case-replicas")
    headers = {"Authorization": f"Bearer {federation.api_keys['caseworker']}", "Idempotency-Key": str(uuid.uuid4())}
    with httpx.Client(verify=_tls(federation), timeout=120) as http:
        first = http.post(f"{replicas['a']}/v1/checks", json=payload, headers=headers)
        assert first.status_code == 200, first.text
        retried = http.post(f"{replicas['b']}/v1/checks", json=payload, headers=headers)
        assert retried.status_code == 200, retried.text
        assert retried.headers["Idempotent-Replayed"] == "true" and retried.content == first.content
        other = http.post(f"{replicas['b']}/v1/checks", json={**payload, "case_id": "case-x"}, headers=headers)
        assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    with psycopg.connect(pg_url) as db:
        rows = dict(
            db.execute(
                "SELECT subject, times FROM probe_windows WHERE program = 'dibao' AND subject = ANY(%s)",
                (payload["pseudonyms"],),
            ).fetchall()
        )
    assert {s: len(t.split(",")) for s, t in rows.items()} == dict.fromkeys(payload["pseudonyms"], 1)
    # Computed once, by a: a result entry for the first request, none for the retry (b would record
    # one under the retry's request id had it computed again).
    with httpx.Client(
        verify=_tls(federation), headers={"Authorization": f"Bearer {federation.api_keys['officer']}"}
    ) as officer:
        on_a = officer.get(
            f"{replicas['a']}/v1/audit/entries",
            params={"kind": "result", "request_id": first.headers["X-Request-Id"], "limit": 100},
        )
        on_b = officer.get(
            f"{replicas['b']}/v1/audit/entries",
            params={"kind": "result", "request_id": retried.headers["X-Request-Id"], "limit": 100},
        )
    assert on_a.status_code == on_b.status_code == 200, (on_a.text, on_b.text)
    assert len(on_a.json()["entries"]) == 1 and on_b.json()["entries"] == []
