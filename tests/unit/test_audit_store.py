"""AuditLog: durable appends from threads and tasks, queries, proofs, checkpoints, reopen."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from audit import merkle
from audit.checkpoints import NoteVerifier
from audit.store import AuditLog
from audit.testing import ORIGIN, log_signer, pseudonym, record
from xgate.errors import ConfigError, InvalidInput, NotFound


@pytest.fixture
def signer():  # type: ignore[no-untyped-def]
    return log_signer()


@pytest.fixture(params=["thread", "process"])
def log(tmp_path: Path, signer, request: pytest.FixtureRequest) -> Iterator[AuditLog]:  # type: ignore[no-untyped-def]
    lg = AuditLog.open(tmp_path / "audit.db", signer=signer, origin=ORIGIN, writer=request.param)
    try:
        yield lg
    finally:
        lg.close()


def _all_leaves(log: AuditLog) -> list[bytes]:
    out: list[bytes] = []
    while True:
        page = log.entries(offset=len(out), limit=1000)
        out += [e.leaf_hash for e in page]
        if len(page) < 1000:
            return out


def test_append_returns_receipt_and_entry_roundtrips(log: AuditLog) -> None:
    rec = record(1)
    r = log.append(rec)
    assert (r.index, r.tree_size) == (0, 1)
    assert r.leaf_hash == merkle.leaf_hash(rec.canonical())
    assert r.root == r.leaf_hash == log.root()
    e = log.entry(0)
    assert e.record == rec and e.data == rec.canonical()


def test_append_accepts_flat_event_dicts_from_other_packages(log: AuditLog) -> None:
    r = log.append(
        {
            "kind": "node_response",
            "request_id": "r-1",
            "actor_agency": "tax",
            "actor_user": "gateway",
            "subjects": [pseudonym(1)],
            "elements": ["monthly_income"],
            "context_sha256": "ab" * 32,
            "response_sha256": ["cd" * 32],
        }
    )
    rec = log.entry(r.index).record
    assert rec.digests["response"] == ("cd" * 32,) and rec.metadata["elements"] == ("monthly_income",)


def test_bad_records_are_refused_and_nothing_is_written(log: AuditLog) -> None:
    with pytest.raises(InvalidInput):
        log.append({"kind": "request", "actor_user": "u", "actor_agency": "a", "income": 4200})
    with pytest.raises(InvalidInput):
        log.append({"kind": "request", "actor_user": "u", "actor_agency": "a", "subjects": ["110101199003077777"]})
    assert log.size == 0


def test_concurrent_threads_and_tasks_get_distinct_contiguous_indices(log: AuditLog) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        for i in range(25):
            idx = log.append(record(k * 100 + i)).index
            with lock:
                got.append(idx)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def tasks() -> list[int]:
        rs = await asyncio.gather(*[log.append_async(record(1000 + i)) for i in range(50)])
        return [r.index for r in rs]

    got += asyncio.run(tasks())
    assert sorted(got) == list(range(250)) and log.size == 250
    assert merkle.root_of(_all_leaves(log)) == log.root()


def test_append_many_is_one_ordered_batch(log: AuditLog) -> None:
    rs = log.append_many([record(i) for i in range(10)])
    assert [r.index for r in rs] == list(range(10))
    assert {r.tree_size for r in rs} == {10}


def test_proofs_from_stored_nodes_match_reference(log: AuditLog) -> None:
    log.append_many([record(i) for i in range(77)])
    leaves = _all_leaves(log)
    for size in (1, 2, 3, 8, 31, 64, 77):
        assert log.root(size) == merkle.root_of(leaves[:size])
        for index in {0, size // 2, size - 1}:
            merkle.verify_inclusion(index, size, leaves[index], log.inclusion_proof(index, size), log.root(size))
        for old in {1, size // 3 or 1, size}:
            merkle.verify_consistency(old, size, log.root(old), log.root(size), log.consistency_proof(old, size))


def test_proof_requests_outside_the_log_are_refused(log: AuditLog) -> None:
    log.append_many([record(i) for i in range(3)])
    with pytest.raises(NotFound):
        log.inclusion_proof(3, 3)
    with pytest.raises(NotFound):
        log.root(4)
    with pytest.raises(InvalidInput):
        log.consistency_proof(0, 3)
    with pytest.raises(NotFound):
        log.entry(3)


def test_filters(log: AuditLog) -> None:
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    log.append(record(1, user="alice", time=t0, request_id="r-a"))
    log.append(record(2, user="bob", agency="hrss", time=t0 + timedelta(hours=1), decision="deny"))
    log.append(record(3, user="alice", kind="result", time=t0 + timedelta(hours=2), request_id="r-a"))
    log.append(record(4, user="carol", time=t0 + timedelta(hours=3), subjects=(pseudonym(1), pseudonym(9))))
    idx = lambda es: [e.index for e in es]  # noqa: E731
    assert idx(log.entries(user="alice")) == [0, 2]
    assert idx(log.entries(agency="hrss")) == [1]
    assert idx(log.entries(decision="deny")) == [1]
    assert idx(log.entries(kind="result")) == [2]
    assert idx(log.entries(request_id="r-a")) == [0, 2]
    assert idx(log.entries(subject=pseudonym(1))) == [0, 3]
    assert idx(log.entries(since=t0 + timedelta(minutes=30), until=t0 + timedelta(hours=3))) == [1, 2]
    assert idx(log.entries(program="dibao", purpose="eligibility", offset=1, limit=2)) == [1, 2]
    assert log.entries(program="other") == []
    with pytest.raises(InvalidInput):
        log.entries(limit=5000)


@pytest.mark.parametrize(("first", "second"), [("thread", "process"), ("process", "thread")])
def test_reopen_keeps_tree_and_continues(tmp_path: Path, signer, first: str, second: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a.db"
    with AuditLog.open(path, signer=signer, origin=ORIGIN, writer=first) as lg:  # type: ignore[arg-type]
        lg.append_many([record(i) for i in range(13)])
        root13 = lg.root()
    with AuditLog.open(path, signer=signer, origin=ORIGIN, writer=second) as lg:  # type: ignore[arg-type]
        assert lg.size == 13 and lg.root() == root13
        lg.append(record(99))
        merkle.verify_consistency(13, 14, root13, lg.root(), lg.consistency_proof(13))


def test_open_refuses_other_origin_and_misnamed_signer(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    with AuditLog.open(tmp_path / "a.db", origin=ORIGIN):
        pass
    with pytest.raises(ConfigError):
        AuditLog.open(tmp_path / "a.db", origin="other.example/log")
    with pytest.raises(ConfigError):
        AuditLog.open(tmp_path / "b.db", signer=signer, origin="other.example/log")


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    lg = AuditLog.open(tmp_path / "a.db", origin=ORIGIN)
    lg.close()
    with pytest.raises(ConfigError):
        lg.append(record(1))


def test_publish_checkpoint_signs_current_root_and_is_idempotent(log: AuditLog, signer) -> None:  # type: ignore[no-untyped-def]
    log.append_many([record(i) for i in range(5)])
    cp = log.publish_checkpoint()
    signer.verifier().verify(cp.text())
    assert (cp.checkpoint.size, cp.checkpoint.root) == (5, log.root())
    assert log.publish_checkpoint() == cp
    assert len(log.checkpoints()) == 1
    log.append(record(6))
    assert log.publish_checkpoint().checkpoint.size == 6
    assert [c.checkpoint.size for c in log.checkpoints()] == [6, 5]


def test_publish_without_signer_is_a_config_error(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "a.db", origin=ORIGIN) as lg, pytest.raises(ConfigError):
        lg.publish_checkpoint()


def test_periodic_checkpoints(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    with AuditLog.open(tmp_path / "a.db", signer=signer, origin=ORIGIN, checkpoint_interval=0.05) as lg:
        lg.append(record(1))
        deadline = time.monotonic() + 10
        while lg.latest_checkpoint() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        cp = lg.latest_checkpoint()
        assert cp is not None and cp.checkpoint.size == 1
        NoteVerifier(ORIGIN, signer.verifier()._pub).verify(cp)


def test_cosignatures_are_stored_and_verified(log: AuditLog) -> None:
    from audit.testing import witness_cosigner

    log.append(record(1))
    cp = log.publish_checkpoint()
    cos = witness_cosigner()
    line = cos.cosign(cp.checkpoint, 1_700_000_000).text()
    merged = log.add_cosignature(1, line, cos.verifier())
    assert cos.verifier().verify(merged) == 1_700_000_000
    assert log.latest_checkpoint() == merged
    other = witness_cosigner("witness.other.example")
    with pytest.raises(Exception, match="not cosigned"):
        log.add_cosignature(1, line, other.verifier())


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_second_writer_is_refused_while_one_is_open(tmp_path: Path, writer: str) -> None:
    path = tmp_path / "a.db"
    with AuditLog.open(path, origin=ORIGIN, writer=writer):  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="another process is writing"):
            AuditLog.open(path, origin=ORIGIN, writer="thread")
        with AuditLog.open(path, origin=ORIGIN, writer="none") as reader:  # readers are always welcome
            assert reader.size == 0
            with pytest.raises(ConfigError, match="read-only"):
                reader.append(record(1))
    with AuditLog.open(path, origin=ORIGIN, writer="thread") as lg:  # the lock went with the writer
        lg.append(record(1))


def test_writer_process_death_fails_closed(tmp_path: Path) -> None:
    from audit.writer import AuditUnavailable

    lg = AuditLog.open(tmp_path / "a.db", origin=ORIGIN, writer="process")
    try:
        lg.append(record(1))
        lg._writer._proc.kill()  # type: ignore[union-attr]
        lg._writer._proc.wait()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while not lg._writer._broken and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
        with pytest.raises(AuditUnavailable):
            lg.append(record(2))

        async def later() -> None:
            await lg.append_async(record(3))

        with pytest.raises(AuditUnavailable):
            asyncio.run(later())
        assert lg.size == 1 and lg.entry(0).record.request_id == record(1).request_id
    finally:
        lg.close()
