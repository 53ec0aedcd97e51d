"""Two gateway processes on one PostgreSQL database, over real processes (issue 18).

The replicas share the worker's five nodes; their budgets, consents, rate limits and registered
HE contexts live in a PostgreSQL cluster of this test's own (tests/postgres.py `own_server`), so
the test can take the database away and bring it back without disturbing the machine's server:

* a replica refuses to start on a schema that `xgate gateway migrate` has not brought up to date;
* the same subjects raced through both replicas are never charged past the probing budget;
* with PostgreSQL stopped, both replicas answer 503 `store_unavailable` (never a partial check
  or a 500) and they recover by themselves once it is back;
* one replica killed: the other keeps answering;
* a user added once (`xgate pki add-user --database`) is known to both replicas, and disabled on both;
* an HE context registered through one replica serves checks through the other;
* the federation's audit log (one log per replica, audit/federation.py): the officer's
  verification covers entries from both replicas and verifies; an altered entry in either
  replica's log, or a replica's log left out, fails it; with one replica killed under load, the
  logs still verify.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, DevFederation, start_gateway, write_gateway_config
from client.sdk import GatewayClient, GatewayError
from client.subjects import read_subjects
from tests.postgres import PG_BANNER, ThrowawayServer, own_server
from xgate.pseudonym import Pseudonymiser, load_key

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=130)]
DIBAO = LEGAL_BASIS["dibao"]
MAX_CHECKS = 3  # the shipped dibao agreement: 3 evaluations per applicant per 30 days


@pytest.fixture(scope="module")
def database() -> Iterator[ThrowawayServer]:
    with own_server() as server:
        if server is None:
            pytest.skip(f"{PG_BANNER}: no PostgreSQL binaries (initdb, pg_ctl) to start a cluster for this test")
        yield server


def _cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def replicas(federation: DevFederation, database: ThrowawayServer) -> Iterator[dict[str, str]]:
    configs = {  # each replica signs its own log with its own key (replica-<name>.audit.key.pem)
        name: write_gateway_config(
            federation,
            config_path=federation.gateway_dir / f"replica-{name}.toml",
            database=database.url,
            replica=name,
            # A killed replica's idempotency claims are taken over after the longest a check may run
            # plus 30 s: short deadlines keep the kill test's wait for them near 45 s, not 90 s.
            deadline_seconds=15.0,
            admission={"request_deadline_s": 15.0},
        )
        for name in ("a", "b")
    }
    refused = _cli("gateway", "serve", "--config", str(configs["a"]))
    assert refused.returncode != 0
    assert "run `xgate gateway migrate`" in refused.stderr + refused.stdout
    migrated = _cli("gateway", "migrate", "--config", str(configs["a"]))
    assert migrated.returncode == 0, migrated.stderr
    assert "applied probe_budget v1" in migrated.stdout
    again = _cli("gateway", "migrate", "--config", str(configs["b"]))
    assert again.returncode == 0 and "0 applied now" in again.stdout
    supervisor = federation.supervisor  # type: ignore[attr-defined]
    urls = {name: start_gateway(federation, supervisor, config_path=path, name=f"replica-{name}")
            for name, path in configs.items()}  # fmt: skip
    yield urls


def _client(
    federation: DevFederation, url: str | list[str], timeout_s: float = 60.0, max_attempts: int = 4
) -> GatewayClient:
    return GatewayClient(
        url,
        federation.api_keys["caseworker"],
        Pseudonymiser(load_key(federation.pseudonym_key)),
        timeout_s=timeout_s,
        verify=str(federation.ca_cert),
        max_attempts=max_attempts,
        signer=federation.signer("caseworker"),
        identity=federation.identity("caseworker"),
    )


def _check(client: GatewayClient, ids: list[str], case: str) -> None:
    client.check("dibao", ids, "dibao", DIBAO, case, approval_ref=DEV_APPROVAL_REF, mode="plaintext")


def test_the_same_subjects_raced_through_two_replicas_are_never_over_charged(
    federation: DevFederation, replicas: dict[str, str]
) -> None:
    subjects = read_subjects(federation.applicants)[280:282]
    answered: Counter[str] = Counter()
    refused: Counter[int] = Counter()
    guard = threading.Lock()
    start = threading.Barrier(6)

    def worker(n: int) -> None:
        with _client(federation, replicas["ab"[n % 2]]) as client:
            start.wait()
            for k in range(3):
                try:
                    _check(client, subjects, f"C-RACE-{n}-{k}")
                except GatewayError as exc:
                    with guard:
                        refused[exc.http_status] += 1
                    continue
                with guard:
                    answered["both"] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answered["both"] == MAX_CHECKS  # 18 attempts, exactly the budget answered across both replicas
    assert refused == Counter({429: 18 - MAX_CHECKS})


def test_without_postgres_both_replicas_refuse_with_503_and_recover_by_themselves(
    federation: DevFederation, replicas: dict[str, str], database: ThrowawayServer
) -> None:
    ids = read_subjects(federation.applicants)[282:284]
    database.stop()
    try:
        for name, url in replicas.items():
            # One attempt: the refusal itself is the point (the SDK would retry a 503 three more times).
            with (
                _client(federation, url, timeout_s=30.0, max_attempts=1) as client,
                pytest.raises(GatewayError) as caught,
            ):
                _check(client, ids, f"C-PG-DOWN-{name}")
            assert caught.value.http_status == 503, name
            assert caught.value.code == "store_unavailable", name
    finally:
        database.start()
    deadline = time.monotonic() + 30
    for name, url in replicas.items():
        while True:
            try:
                with _client(federation, url, max_attempts=1) as client:  # this loop is the retry
                    _check(client, ids, f"C-PG-BACK-{name}")
                break
            except GatewayError as exc:
                assert exc.http_status == 503 and time.monotonic() < deadline, (name, exc.http_status)
                time.sleep(0.5)


def _officer(federation: DevFederation, url: str, method: str, path: str) -> dict[str, object]:
    response = httpx.request(
        method,
        f"{url}{path}",
        headers={"Authorization": f"Bearer {federation.api_keys['officer']}"},
        verify=str(federation.ca_cert),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _verify_federation(
    federation: DevFederation, url: str, logs: dict[str, Path], tmp: Path
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    """The officer's check: the manifest from one replica, every replica's log with its key."""
    for name in ("a", "b"):  # a checkpoint of each log, recorded in the manifest (a killed one has its earlier one)
        with contextlib.suppress(httpx.TransportError):
            _officer(federation, REPLICA_URLS[name], "POST", "/v1/audit/checkpoints")
    (tmp / "manifest.json").write_text(json.dumps(_officer(federation, url, "GET", "/v1/audit/federation")))
    specs = [arg for name, db in logs.items()
             for arg in ("--log", f"{db}={federation.gateway_dir / f'replica-{name}.audit.pub.pem'}")]  # fmt: skip
    out = tmp / "merged.jsonl"
    done = _cli(
        "audit", "verify-federation", "--manifest", str(tmp / "manifest.json"), *specs, "--entries-out", str(out)
    )
    merged = [json.loads(line) for line in out.read_text().splitlines()] if done.returncode == 0 else []
    return done, merged


REPLICA_URLS: dict[str, str] = {}


def _audit_db(federation: DevFederation, name: str) -> Path:
    return federation.gateway_dir / f"replica-{name}.audit.sqlite"


def test_the_federation_log_covers_both_replicas_and_detects_tampering_with_either(
    federation: DevFederation, replicas: dict[str, str], tmp_path: Path
) -> None:
    REPLICA_URLS.update(replicas)
    ids = read_subjects(federation.applicants)[286:288]
    for name, url in replicas.items():
        with _client(federation, url) as client:
            _check(client, ids, f"C-AUDIT-{name}")
    manifest = _officer(federation, replicas["a"], "GET", "/v1/audit/federation")
    assert manifest["this_log"] == "xgate.gateway.a/audit"
    assert [log["origin"] for log in manifest["logs"]] == ["xgate.gateway.a/audit", "xgate.gateway.b/audit"]  # type: ignore[attr-defined]
    logs = {name: _audit_db(federation, name) for name in ("a", "b")}
    done, merged = _verify_federation(federation, replicas["b"], logs, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "OK: federation: 2 logs" in done.stdout
    cases = {(e["origin"], e["record"].get("case_id")) for e in merged}  # type: ignore[union-attr]
    assert {("xgate.gateway.a/audit", "C-AUDIT-a"), ("xgate.gateway.b/audit", "C-AUDIT-b")} <= cases
    # Tampering with either replica's part (a consistent copy, altered) is detected, and so is leaving one out.
    for name in ("a", "b"):
        copy = tmp_path / f"tampered-{name}.sqlite"
        with sqlite3.connect(logs[name]) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        with sqlite3.connect(copy) as conn:
            conn.execute("UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), 'dibao', 'dibaX') AS BLOB) "
                         "WHERE idx = (SELECT MIN(idx) FROM entries WHERE program = 'dibao')")  # fmt: skip
        bad, _ = _verify_federation(federation, replicas["a"], {**logs, name: copy}, tmp_path)
        assert bad.returncode == 1 and f"log 'xgate.gateway.{name}/audit'" in bad.stderr, bad.stderr
        assert "entry altered" in bad.stderr
    only_a, _ = _verify_federation(federation, replicas["a"], {"a": logs["a"]}, tmp_path)
    assert only_a.returncode == 1 and "not verified: xgate.gateway.b/audit" in only_a.stderr


def test_a_user_added_once_is_known_to_every_replica(
    federation: DevFederation, replicas: dict[str, str], database: ThrowawayServer
) -> None:
    spec = ["--user", "cw-replicated", "--agency", "civil_affairs", "--role", "caseworker", "--tier", "gold"]
    added = _cli("pki", "add-user", "--database", database.url, *spec)
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[0]

    def whoami(url: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.get(f"{url}/v1/whoami", headers=headers, verify=str(federation.ca_cert), timeout=10)

    for url in replicas.values():  # added through neither replica, known to both
        answer = whoami(url)
        assert answer.status_code == 200 and answer.json()["user"] == "cw-replicated", answer.text
    disabled = _cli("pki", "disable-user", "--database", database.url, "--user", "cw-replicated")
    assert disabled.returncode == 0 and "disabled 1 key(s)" in disabled.stdout
    time.sleep(2.5)  # a replica keeps an answer for two seconds
    assert [whoami(url).status_code for url in replicas.values()] == [401, 401]


def test_a_context_registered_through_one_replica_serves_checks_through_the_other(
    federation: DevFederation, replicas: dict[str, str]
) -> None:
    from crypto.he import RequesterKeys

    keys = RequesterKeys.generate()
    pseudo = Pseudonymiser(load_key(federation.pseudonym_key))
    with GatewayClient(replicas["a"], federation.api_keys["caseworker"], pseudo, keys,
                       verify=str(federation.ca_cert)) as first:  # fmt: skip
        fingerprint, _ = first.register_context()
    headers = {"Authorization": f"Bearer {federation.api_keys['caseworker']}"}
    found = httpx.get(f"{replicas['b']}/v1/contexts/{fingerprint}", headers=headers,
                      verify=str(federation.ca_cert), timeout=10)  # fmt: skip
    assert found.status_code == 200 and found.json()["fingerprint"] == fingerprint, found.text
    with GatewayClient(replicas["b"], federation.api_keys["caseworker"], pseudo, keys,
                       verify=str(federation.ca_cert), signer=federation.signer("caseworker")) as second:  # fmt: skip
        result = second.check("dibao", read_subjects(federation.applicants)[288:289], "dibao", DIBAO,
                              "case-ctx-replica", approval_ref=DEV_APPROVAL_REF)  # fmt: skip
        assert second.context_registrations == 0 and len(result.rows()) == 1


@pytest.mark.timeout(600)  # the cut-off check's claim is abandoned only after a check's longest run
def test_one_replica_killed_under_load_the_other_answers_and_the_federation_log_verifies(
    federation: DevFederation, replicas: dict[str, str], tmp_path: Path
) -> None:
    REPLICA_URLS.update(replicas)
    subjects = read_subjects(federation.applicants)[240:272]
    answered: Counter[str] = Counter()
    stop = threading.Event()

    def load(n: int) -> None:  # client-side spreading with failover: a killed replica's clients move on
        urls = [replicas["a"], replicas["b"]] if n % 2 == 0 else [replicas["b"], replicas["a"]]
        # A check cut off on the killed replica holds its idempotency claim until the claim is
        # abandoned (longer than any check may run): its retry waits on the survivor (409, Retry-After).
        with _client(federation, urls, max_attempts=150) as client:
            k = 0
            while not stop.is_set() and k < 8:
                _check(client, subjects[n * 8 + k : n * 8 + k + 1], f"C-LOAD-{n}-{k}")
                answered[str(n)] += 1
                k += 1

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    supervisor = federation.supervisor  # type: ignore[attr-defined]
    (child,) = [c for c in supervisor.children if c.name == "replica-a"]
    child.process.kill()
    child.process.wait(timeout=10)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{replicas['a']}/healthz", verify=str(federation.ca_cert), timeout=3)
    ids = read_subjects(federation.applicants)[284:286]
    with _client(federation, replicas["b"]) as client:
        _check(client, ids, "C-SURVIVOR")
    for t in threads:
        t.join(timeout=240)
    assert sum(answered.values()) == 32, answered  # every client finished, on the survivor if need be
    logs = {name: _audit_db(federation, name) for name in ("a", "b")}
    done, merged = _verify_federation(federation, replicas["b"], logs, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout  # the killed replica's log verifies too
    results = Counter(
        str(e["record"].get("case_id"))
        for e in merged
        if e["record"]["kind"] == "result"  # type: ignore[index,union-attr]
    )
    # Every answered check has its result entry in one of the replicas' logs.
    assert all(results[f"C-LOAD-{n}-{k}"] >= 1 for n in range(4) for k in range(8)), results
