"""`federated.supernode_process`: Flower's SuperNode loop with its fixed sleeps capped, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import pytest

from federated import supernode_process


@pytest.fixture
def loop() -> Iterator[ModuleType]:
    from flwr.supernode import start_client_internal

    original = start_client_internal.time
    yield start_client_internal
    start_client_internal.time = original  # type: ignore[attr-defined]


def test_the_loops_sleeps_are_capped_and_nothing_else_changes(loop: ModuleType) -> None:
    patched = supernode_process.shorten_polls(0.05)
    assert patched is loop
    t0 = time.monotonic()
    loop.time.sleep(3)  # Flower's idle poll
    assert time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    loop.time.sleep(0.01)  # a shorter sleep is left as asked
    assert time.monotonic() - t0 >= 0.01
    assert loop.time.monotonic is time.monotonic and loop.time.time is time.time
    assert time.sleep is not loop.time.sleep  # the rest of the process keeps the real module


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_pulls_slow_down_after_a_pause_and_speed_up_with_the_next_message() -> None:
    clock = _Clock()
    backoff = supernode_process.IdleBackoff(0.25, clock)
    idle, reply = supernode_process.FLOWER_IDLE_S, 0.5  # what Flower's loop asks for
    assert backoff.wait(idle) == 0.25  # idle, but only just
    clock.now += supernode_process.IDLE_AFTER_S - 0.01
    assert backoff.wait(idle) == 0.25
    clock.now += 0.02  # idle for IDLE_AFTER_S: one pull a second, never Flower's 3 s
    assert backoff.wait(idle) == supernode_process.IDLE_POLL_S == 1.0
    clock.now += 60
    assert backoff.wait(idle) == 1.0
    assert backoff.wait(reply) == 0.25  # a message is being answered: short waits at once
    assert backoff.wait(idle) == 0.25
    clock.now += supernode_process.IDLE_AFTER_S
    assert backoff.wait(idle) == 1.0
    assert backoff.wait(0.01) == 0.01  # a shorter wait stays as asked


def test_an_agency_poll_longer_than_the_idle_poll_is_kept() -> None:
    clock = _Clock()
    backoff = supernode_process.IdleBackoff(2.0, clock)
    assert backoff.wait(supernode_process.FLOWER_IDLE_S) == 2.0
    clock.now += 3600
    assert backoff.wait(supernode_process.FLOWER_IDLE_S) == 2.0
    assert backoff.wait(0.5) == 0.5


def test_a_changed_flower_loop_is_refused_not_silently_left_alone(loop: ModuleType) -> None:
    loop.time = None  # type: ignore[attr-defined] # as if Flower stopped importing `time` there
    with pytest.raises(RuntimeError, match="start_client_internal changed"):
        supernode_process.shorten_polls()


def test_the_entry_point_is_flowers_supernode_command() -> None:
    """The module runs `flower-supernode` itself: its own argument parser answers."""
    out = subprocess.run(
        [sys.executable, "-m", "federated.supernode_process", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--superlink" in out.stdout and "--node-config" in out.stdout


def test_the_idle_poll_flag_is_ours_validated_and_removed_before_flower_parses() -> None:
    assert supernode_process.poll_from_args(["--superlink", "a:1"]) == (
        supernode_process.POLL_S,
        ["--superlink", "a:1"],
    )
    assert supernode_process.poll_from_args(["--idle-poll-s", "1.5", "--insecure"]) == (1.5, ["--insecure"])
    refused = {
        ("--idle-poll-s",): "needs a number",
        ("--idle-poll-s", "x"): "needs a number",
        ("--idle-poll-s", "0"): "within 0.05..3",
        ("--idle-poll-s", "60"): "within 0.05..3",
    }
    for bad, message in refused.items():
        with pytest.raises(SystemExit, match=message):
            supernode_process.poll_from_args(list(bad))


def test_an_out_of_range_poll_stops_the_process_with_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "federated.supernode_process", "--idle-poll-s", "0.001", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.strip() == "--idle-poll-s must be within 0.05..3 s, got 0.001"


def test_the_clientapp_a_supernode_starts_is_xgates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's SuperExec starts `flwr-clientapp` by name from PATH for every message: a SuperNode started
    here finds xgate's (federated/clientapp_entry.py, which never loads code from a job's app bundle), and
    the warm server forks that same entry (tests/attacks/test_foreign_clientapp.py runs it)."""
    import inspect
    import shutil

    from federated import warm_clientapp

    monkeypatch.setenv("PATH", os.environ["PATH"])  # restored after the test
    entry = supernode_process.clientapp_on_path()
    try:
        assert shutil.which("flwr-clientapp") == str(entry)
        assert "from federated.clientapp_entry import main" in entry.read_text()
        out = subprocess.run([str(entry), "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "--runtime-api-address" in out.stdout
        assert inspect.signature(warm_clientapp.serve).parameters["entry_point"].default == (
            "federated.clientapp_entry:main"
        )
    finally:
        shutil.rmtree(entry.parent, ignore_errors=True)
