"""gateway/idempotency.py on SQLite and on PostgreSQL (two handles = two gateway replicas).

A retried check with the same key must be answered from the store (neither charged nor computed
again), a key still being answered must be refused with Retry-After on every replica, a key
reused for another body must be refused, and a failed check must free its key.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.idempotency import (
    IDEMPOTENCY_MIGRATIONS,
    Claim,
    IdempotencyStore,
    Replay,
    key_digest,
    request_digest,
    validate_key,
)
from xgate.db import Database, PostgresDatabase, migrate
from xgate.errors import ConfigError, IdempotencyInProgress, IdempotencyKeyInvalid, IdempotencyKeyReused

OWNER = "civil_affairs/cw-zhang"
KEY = "6f1c1b4e-8a52-4d53-9d2b-3b1f6f0d2a11"
BODY = {"program": "dibao", "purpose": "eligibility", "pseudonyms": ["a" * 26]}
DIGEST = request_digest("POST /v1/checks", BODY)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _reset_pg(db: Database) -> None:
    with db.transaction() as tx:
        tx.execute("DROP TABLE IF EXISTS idempotency_keys")
        tx.execute("CREATE TABLE IF NOT EXISTS xgate_schema (component TEXT NOT NULL, version INTEGER NOT NULL,"
                   " PRIMARY KEY (component, version))")  # fmt: skip
        tx.execute("DELETE FROM xgate_schema WHERE component = 'idempotency'")


@pytest.fixture(params=["sqlite", "postgresql"])
def replicas(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[IdempotencyStore, IdempotencyStore, Clock]]:
    """Two store handles on one database: two gateway replicas (on SQLite: two processes on one host)."""
    clock = Clock()
    if request.param == "sqlite":
        path = tmp_path / "idempotency.sqlite"
        yield IdempotencyStore(path, clock=clock), IdempotencyStore(path, clock=clock), clock
        return
    url: str = request.getfixturevalue("pg_url")
    a, b = PostgresDatabase(url, max_size=6), PostgresDatabase(url, max_size=6)
    _reset_pg(a)
    migrate(a, IDEMPOTENCY_MIGRATIONS)
    try:
        yield IdempotencyStore(a, clock=clock), IdempotencyStore(b, clock=clock), clock
    finally:
        a.close()
        b.close()


Replicas = tuple[IdempotencyStore, IdempotencyStore, Clock]


def test_an_answered_key_is_replayed_on_the_other_replica_byte_for_byte(replicas: Replicas) -> None:
    a, b, _ = replicas
    claim = a.begin(OWNER, KEY, DIGEST)
    assert isinstance(claim, Claim)
    answer = b'{"request_id":"r1","criteria":[{"ciphertexts":["AAEC"]}]}'
    assert a.complete(claim, 200, answer)
    for store in (a, b):
        replay = store.begin(OWNER, KEY, DIGEST)
        assert isinstance(replay, Replay)
        assert (replay.status, replay.body) == (200, answer)


def test_a_key_still_being_answered_is_refused_on_every_replica_with_retry_after(replicas: Replicas) -> None:
    a, b, clock = replicas
    assert isinstance(a.begin(OWNER, KEY, DIGEST), Claim)
    clock.now += 5
    for store in (a, b):
        with pytest.raises(IdempotencyInProgress) as refused:
            store.begin(OWNER, KEY, DIGEST)
        assert refused.value.http_status == 409
        assert 0 < refused.value.details["retry_after_s"] <= 1.0
        assert KEY not in refused.value.message


def test_the_same_key_for_another_body_is_refused(replicas: Replicas) -> None:
    a, b, _ = replicas
    claim = a.begin(OWNER, KEY, DIGEST)
    assert isinstance(claim, Claim)
    other = request_digest("POST /v1/checks", {**BODY, "purpose": "audit"})
    with pytest.raises(IdempotencyKeyReused, match="different request"):
        b.begin(OWNER, KEY, other)
    a.complete(claim, 200, b"{}")
    with pytest.raises(IdempotencyKeyReused) as refused:  # answered or not
        b.begin(OWNER, KEY, other)
    assert refused.value.http_status == 422 and refused.value.code == "idempotency_key_reused"


def test_a_failed_check_frees_its_key_so_a_retry_recomputes(replicas: Replicas) -> None:
    a, b, _ = replicas
    first = a.begin(OWNER, KEY, DIGEST)
    assert isinstance(first, Claim)
    assert a.release(first)
    second = b.begin(OWNER, KEY, DIGEST)
    assert isinstance(second, Claim) and second.token != first.token
    assert not a.release(first)  # a stale handle cannot drop the new claim
    assert not a.complete(first, 200, b"{}")
    assert b.complete(second, 200, b'{"ok":1}')
    assert not b.release(second)  # an answered key stays answered
    assert isinstance(a.begin(OWNER, KEY, DIGEST), Replay)


def test_an_abandoned_claim_is_taken_over_after_the_check_deadline(replicas: Replicas) -> None:
    a, b, clock = replicas
    dead = a.begin(OWNER, KEY, DIGEST)  # its process dies mid-check
    assert isinstance(dead, Claim)
    clock.now += a.stale_after_s - 1
    with pytest.raises(IdempotencyInProgress):
        b.begin(OWNER, KEY, DIGEST)
    clock.now += 2
    taken = b.begin(OWNER, KEY, DIGEST)
    assert isinstance(taken, Claim)
    assert not a.complete(dead, 200, b"late")  # the late first attempt does not overwrite
    assert b.complete(taken, 200, b"fresh")
    replay = a.begin(OWNER, KEY, DIGEST)
    assert isinstance(replay, Replay) and replay.body == b"fresh"


def test_keys_belong_to_their_user(replicas: Replicas) -> None:
    a, b, _ = replicas
    mine = a.begin(OWNER, KEY, DIGEST)
    assert isinstance(mine, Claim)
    a.complete(mine, 200, b"mine")
    theirs = b.begin("hrss/cw-chen", KEY, DIGEST)  # the same key from someone else: their own check
    assert isinstance(theirs, Claim)


def test_answers_expire_after_the_ttl_and_are_pruned(replicas: Replicas) -> None:
    a, b, clock = replicas
    claim = a.begin(OWNER, KEY, DIGEST)
    assert isinstance(claim, Claim)
    a.complete(claim, 200, b"answer")
    clock.now += a.ttl_s - 1
    assert isinstance(b.begin(OWNER, KEY, DIGEST), Replay)
    clock.now += 2
    assert a.prune() == 1 and a.count() == 0
    assert isinstance(b.begin(OWNER, KEY, DIGEST), Claim)  # expired: the key is free again


def test_the_key_itself_is_never_stored(replicas: Replicas) -> None:
    a, _, _ = replicas
    claim = a.begin(OWNER, KEY, DIGEST)
    assert isinstance(claim, Claim) and claim.key_sha256 == key_digest(KEY)
    a.complete(claim, 200, b"{}")
    with a.db.read() as tx:
        rows = tx.execute("SELECT * FROM idempotency_keys").fetchall()
    assert KEY not in repr(rows) and key_digest(KEY) in repr(rows)


def test_concurrent_claims_of_one_key_on_both_replicas_have_exactly_one_winner(replicas: Replicas) -> None:
    a, b, _ = replicas
    start = threading.Barrier(8)
    won: list[Claim] = []
    refused: list[Exception] = []
    guard = threading.Lock()

    def attempt(store: IdempotencyStore) -> None:
        start.wait()
        try:
            result = store.begin(OWNER, KEY, DIGEST)
        except IdempotencyInProgress as exc:
            with guard:
                refused.append(exc)
            return
        assert isinstance(result, Claim)
        with guard:
            won.append(result)

    threads = [threading.Thread(target=attempt, args=(a if i % 2 else b,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1 and len(refused) == 7


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 256, "ключ", "tab\there", "nl\nhere", "\x7f"],
    ids=["empty", "too-long", "non-ascii", "tab", "newline", "del"],
)
def test_malformed_keys_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(IdempotencyKeyInvalid) as refused:
        validate_key(bad)
    assert refused.value.http_status == 400 and (not bad or bad not in refused.value.message)


def test_the_longest_and_odd_printable_keys_are_accepted() -> None:
    assert validate_key("k" * 255) and validate_key("a b~!{}") and validate_key("~")


def test_the_request_digest_is_canonical() -> None:
    reordered = dict(reversed(list(BODY.items())))
    assert request_digest("POST /v1/checks", reordered) == DIGEST
    assert request_digest("POST /v1/checks", {**BODY, "pseudonyms": ["b" * 26]}) != DIGEST


def test_replicated_mode_refuses_a_schema_that_was_not_migrated(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    try:
        _reset_pg(db)
        with pytest.raises(ConfigError, match=r"idempotency v1, idempotency v2 pending\): run `xgate gateway migrate`"):
            IdempotencyStore(db)
    finally:
        db.close()
