"""PSI finishing over worker processes gives exactly what one process gives, and fails loudly."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from federated import psi, psi_pool


def _lists(sizes: list[int]) -> list[bytes]:
    blinder = psi.new_key()
    return [psi.first_tags(blinder, "job", [f"{k}-{i}" for i in range(n)]) for k, n in enumerate(sizes)]


def test_workers_finish_every_list_as_one_process_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_pool, "PARALLEL_FROM", 1)  # use workers even for these small lists
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def counted(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started.append(real_popen(*args, **kwargs))  # type: ignore[call-overload]
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", counted)
    key, lists = psi.new_key(), _lists([301, 0, 17, 1])
    assert psi_pool.finish_lists(key, lists, workers=3) == [psi.finish(key, tags) for tags in lists]
    assert len(started) == 3 and all(p.returncode == 0 for p in started)


def test_small_work_stays_in_the_calling_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_worker(*args: object, **kwargs: object) -> list[bytes]:
        raise AssertionError("a worker was started for a small list")

    monkeypatch.setattr(psi_pool, "_in_workers", no_worker)
    key, lists = psi.new_key(), _lists([50, 20])
    assert psi_pool.finish_lists(key, lists, workers=2) == [psi.finish(key, tags) for tags in lists]


def test_a_ragged_list_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="32-byte tags"):
        psi_pool.finish_lists(psi.new_key(), [b"\x01" * 33], workers=2)


def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        psi_pool.finish_lists(b"\xaa" * 31, _lists([3]), workers=2)


def test_the_key_reaches_a_worker_by_no_argument_environment_or_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each worker writes what it saw to a file of its own, whole or not at all: the pool stops the
    # other worker when the first fails, which could catch it between opening a shared file
    # (truncating the first worker's report) and writing it.
    snoop = (
        "import os, sys\n"
        "sys.stdin.buffer.read()\n"
        f"report = os.path.join({str(tmp_path)!r}, 'seen-%d' % os.getpid())\n"
        "with open(report + '.part', 'w') as out:\n"
        "    out.write(repr((sys.argv, dict(os.environ), open('/proc/self/cmdline', 'rb').read(),"
        " open('/proc/self/environ', 'rb').read())))\n"
        "os.replace(report + '.part', report)\n"
        "sys.exit('snooped')\n"
    )
    monkeypatch.setattr(psi_pool, "PARALLEL_FROM", 1)
    monkeypatch.setattr(psi_pool, "_WORKER", ("-c", snoop))
    key = psi.new_key()
    with pytest.raises(RuntimeError, match="a PSI worker failed: snooped") as failure:
        psi_pool.finish_lists(key, _lists([40]), workers=2)
    seen = "".join(report.read_text() for report in tmp_path.glob("seen-*") if report.suffix != ".part")
    assert "PATH" in seen  # it did look (the worker whose failure ended the call wrote its report first)
    for form in (key.hex(), repr(key), key.decode("latin-1")):
        assert form not in seen and form not in str(failure.value)


def test_a_module_planted_in_the_working_directory_does_not_get_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The ClientApp runs in the SuperNode's home: a `federated/psi_pool.py` there must not be the
    worker that receives the key (workers start with -P)."""
    monkeypatch.setattr(psi_pool, "PARALLEL_FROM", 1)
    leak = tmp_path / "leaked-key"
    (tmp_path / "federated").mkdir()
    (tmp_path / "federated" / "__init__.py").write_text("")
    (tmp_path / "federated" / "psi_pool.py").write_text(
        f"import sys\nopen({str(leak)!r}, 'wb').write(sys.stdin.buffer.read()[:32])\n"
    )
    monkeypatch.chdir(tmp_path)
    key, lists = psi.new_key(), _lists([60])
    assert psi_pool.finish_lists(key, lists, workers=2) == [psi.finish(key, tags) for tags in lists]
    assert not leak.exists()


def test_a_failing_worker_fails_the_call_naming_why_and_stops_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_pool, "PARALLEL_FROM", 1)
    # 41 tags over 2 workers: pieces of 21 and 20 tags. The first worker would take a minute, the
    # second fails at once; the call must fail with the second's reason without waiting for the first.
    slow_or_failing = (
        "import sys, time; d = sys.stdin.buffer.read(); len(d) > 690 and time.sleep(60); sys.exit('no memory')"
    )
    monkeypatch.setattr(psi_pool, "_WORKER", ("-c", slow_or_failing))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="a PSI worker failed: no memory"):
        psi_pool.finish_lists(psi.new_key(), _lists([41]), workers=2)
    assert time.monotonic() - started < 30


def test_a_worker_past_its_time_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_pool, "PARALLEL_FROM", 1)
    monkeypatch.setattr(psi_pool, "_WORKER", ("-c", "import time; time.sleep(60)"))
    with pytest.raises(RuntimeError, match=r"longer than 0\.5 s"):
        psi_pool.finish_lists(psi.new_key(), _lists([40]), workers=2, timeout_s=0.5)


def test_a_worker_that_answers_short_fails_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi_pool, "PARALLEL_FROM", 1)
    monkeypatch.setattr(psi_pool, "_WORKER", ("-c", "import sys; sys.stdin.buffer.read(); print('x')"))
    with pytest.raises(RuntimeError, match="a PSI worker failed"):
        psi_pool.finish_lists(psi.new_key(), _lists([40]), workers=2)


def test_a_cgroup_quota_caps_the_workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(psi_pool, "_CGROUP_CPU_MAX", quota)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    quota.write_text("150000 100000\n")
    assert psi_pool.cores() == 2
    quota.write_text("max 100000\n")
    assert psi_pool.cores() == 64
    quota.write_text("garbage\n")
    assert psi_pool.cores() == 64
