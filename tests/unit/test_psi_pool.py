"""PSI finishing over worker processes gives exactly what one process gives, and fails loudly."""

from __future__ import annotations

import pytest

from federated import psi, psi_pool


def _lists(sizes: list[int]) -> list[bytes]:
    blinder = psi.new_key()
    return [psi.first_tags(blinder, "job", [f"{k}-{i}" for i in range(n)]) for k, n in enumerate(sizes)]


def test_workers_finish_every_list_as_one_process_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_pool, "PARALLEL_FROM", 1)  # use workers even for these small lists
    key, lists = psi.new_key(), _lists([301, 0, 17, 1])
    assert psi_pool.finish_lists(key, lists, workers=3) == [psi.finish(key, tags) for tags in lists]


def test_small_work_stays_in_the_calling_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_worker(key: bytes, tags: bytes) -> bytes:
        raise AssertionError("a worker was started for a small list")

    monkeypatch.setattr(psi_pool, "_in_worker", no_worker)
    key, lists = psi.new_key(), _lists([50, 20])
    assert psi_pool.finish_lists(key, lists, workers=2) == [psi.finish(key, tags) for tags in lists]


def test_a_ragged_list_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="32-byte tags"):
        psi_pool.finish_lists(psi.new_key(), [b"\x01" * 33], workers=2)


def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        psi_pool.finish_lists(b"\xaa" * 31, _lists([3]), workers=2)


def test_a_failing_worker_fails_the_call_naming_why_and_not_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_pool, "PARALLEL_FROM", 1)
    monkeypatch.setattr(psi_pool, "_WORKER", ("-c", "import sys; sys.stdin.buffer.read(); sys.exit('out of memory')"))
    key = psi.new_key()
    with pytest.raises(RuntimeError, match="a PSI worker failed: out of memory") as failure:
        psi_pool.finish_lists(key, _lists([40]), workers=2)
    assert key.hex() not in str(failure.value) and repr(key) not in str(failure.value)


def test_a_worker_that_answers_short_fails_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_pool, "PARALLEL_FROM", 1)
    monkeypatch.setattr(psi_pool, "_WORKER", ("-c", "import sys; sys.stdin.buffer.read(); print('x')"))
    with pytest.raises(RuntimeError, match="a PSI worker failed"):
        psi_pool.finish_lists(psi.new_key(), _lists([40]), workers=2)
