"""Two gateway processes on one PostgreSQL database, over real processes (issue 18).

The replicas share the worker's five nodes; their budgets, consents and rate limits live in a
PostgreSQL cluster of this test's own (tests/postgres.py `own_server`), so the test can take the
database away and bring it back without disturbing the machine's server:

* a replica refuses to start on a schema that `xgate gateway migrate` has not brought up to date;
* the same subjects raced through both replicas are never charged past the probing budget;
* with PostgreSQL stopped, both replicas answer 503 `store_unavailable` (never a partial check
  or a 500) and they recover by themselves once it is back;
* one replica killed: the other keeps answering.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS, DevFederation, start_gateway, write_gateway_config
from client.sdk import GatewayClient, GatewayError
from client.subjects import read_subjects
from tests.postgres import PG_BANNER, ThrowawayServer, own_server
from xgate.pseudonym import Pseudonymiser, load_key

pytestmark = pytest.mark.integration
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
    configs = {
        name: write_gateway_config(
            federation, config_path=federation.gateway_dir / f"replica-{name}.toml", database=database.url
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


def _client(federation: DevFederation, url: str, timeout_s: float = 60.0) -> GatewayClient:
    return GatewayClient(
        url,
        federation.api_keys["caseworker"],
        Pseudonymiser(load_key(federation.pseudonym_key)),
        timeout_s=timeout_s,
        verify=str(federation.ca_cert),
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
            with _client(federation, url, timeout_s=30.0) as client, pytest.raises(GatewayError) as caught:
                _check(client, ids, f"C-PG-DOWN-{name}")
            assert caught.value.http_status == 503, name
            assert caught.value.code == "store_unavailable", name
    finally:
        database.start()
    deadline = time.monotonic() + 30
    for name, url in replicas.items():
        while True:
            try:
                with _client(federation, url) as client:
                    _check(client, ids, f"C-PG-BACK-{name}")
                break
            except GatewayError as exc:
                assert exc.http_status == 503 and time.monotonic() < deadline, (name, exc.http_status)
                time.sleep(0.5)


def test_one_replica_killed_the_other_keeps_answering(federation: DevFederation, replicas: dict[str, str]) -> None:
    supervisor = federation.supervisor  # type: ignore[attr-defined]
    (child,) = [c for c in supervisor.children if c.name == "replica-a"]
    child.process.kill()
    child.process.wait(timeout=10)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{replicas['a']}/healthz", verify=str(federation.ca_cert), timeout=3)
    ids = read_subjects(federation.applicants)[284:286]
    with _client(federation, replicas["b"]) as client:
        _check(client, ids, "C-SURVIVOR")
