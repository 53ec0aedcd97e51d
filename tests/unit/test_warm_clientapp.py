"""`federated.warm_clientapp`: a forwarder named `flwr-clientapp` hands each run to a warm server,
which forks a child that sees the caller's argv, environment, directory and streams, shares no
randomness with its siblings, reports its status, dies when the caller is stopped, and is replaced
by the real command when no server answers. Real processes, a stand-in for Flower's main."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from federated import warm_clientapp

ENTRY = "tests.unit.warm_entry:main"


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[Path]:
    """A running warm server with the stand-in entry; yields the forwarder."""
    sock = tmp_path / "s"
    real = tmp_path / "real-clientapp"
    real.write_text('#!/bin/sh\necho real "$@"\n')
    real.chmod(0o700)
    forwarder = warm_clientapp.install(tmp_path / "bin", sock, real)
    server = subprocess.Popen([sys.executable, "-m", "federated.warm_clientapp", "serve", str(sock), ENTRY])
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert server.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    yield forwarder
    server.terminate()
    server.wait(timeout=30)


def _run(forwarder: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WARM_TEST_MARKER": "from-the-caller"}
    return subprocess.run([str(forwarder), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def test_the_child_is_the_callers_run_and_shares_no_randomness(warm: Path, tmp_path: Path) -> None:
    first, second = _run(warm, "0", "--token", "t1", cwd=tmp_path), _run(warm, "7", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 7  # the child's status is the caller's
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["argv"] == ["0", "--token", "t1"] and a["cwd"] == str(tmp_path) and a["marker"] == "from-the-caller"
    for generator in ("secrets", "openssl", "numpy_global", "python_random"):
        assert a[generator] != b[generator], generator


def test_stopping_the_caller_stops_the_child(warm: Path, tmp_path: Path) -> None:
    caller = subprocess.Popen([str(warm), "99"], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert caller.stdout is not None
    child = json.loads(caller.stdout.readline())["pid"]
    caller.send_signal(signal.SIGTERM)
    assert caller.wait(timeout=30) != 0
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "the child outlived its caller"
        time.sleep(0.05)


def test_without_a_server_the_real_command_runs(tmp_path: Path) -> None:
    real = tmp_path / "real-clientapp"
    real.write_text('#!/bin/sh\necho real "$@"\n')
    real.chmod(0o700)
    forwarder = warm_clientapp.install(tmp_path / "bin", tmp_path / "nobody-listens", real)
    out = _run(forwarder, "--token", "t", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "real --token t"


def test_a_killed_servers_directory_is_swept_by_the_next_start(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live = tmp_path / "xgate-warm-stale", tmp_path / "xgate-warm-live"
    for d, pid in ((stale, dead.stdout.strip()), (live, str(os.getpid()))):
        (d / "bin").mkdir(parents=True)
        (d / "pid").write_text(pid)
    warm_clientapp._sweep_stale(tmp_path)
    assert not stale.exists() and live.exists()


@pytest.mark.skipif(
    os.getuid() != 0 or not os.access("/usr/bin/python3", os.X_OK), reason="needs root and a system Python"
)
def test_another_user_cannot_ask_for_a_run() -> None:
    """Even with the directory and the socket opened to everyone, the server checks the caller's
    user id (SO_PEERCRED) and runs nothing for another user."""
    public = Path(tempfile.mkdtemp(prefix="xgate-warm-test-"))
    try:
        public.chmod(0o755)
        sock = public / "s"
        # The forwarder needs only the standard library: the system Python, which `nobody` may run.
        forwarder = warm_clientapp.install(public / "bin", sock, Path("/bin/false"), python="/usr/bin/python3")
        for path in (public / "bin", forwarder):
            path.chmod(0o755)
        server = subprocess.Popen([sys.executable, "-m", "federated.warm_clientapp", "serve", str(sock), ENTRY])
        try:
            deadline = time.monotonic() + 60
            while not sock.exists():
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            sock.chmod(0o777)
            out = subprocess.run(
                [str(forwarder), "0"],
                capture_output=True,
                text=True,
                cwd="/",
                env={"PATH": os.environ["PATH"]},
                user=65534,  # nobody
                timeout=60,
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
        assert out.returncode == 1 and out.stdout == ""  # refused: the stand-in never printed, no status
    finally:
        shutil.rmtree(public, ignore_errors=True)


_IMPORTED_BY_A_CHILD = """
import importlib, sys
from federated import warm_clientapp
module, _, _ = warm_clientapp.CLIENTAPP_ENTRY.partition(":")
for name in (module, *warm_clientapp._PRELOAD):
    importlib.import_module(name)
before = set(sys.modules)
from federated import clientapp_entry
clientapp_entry.install()  # what the entry's main does in each forked child before Flower's main
from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
print(sorted(set(sys.modules) - before))
"""


def test_a_forked_child_imports_nothing_the_server_did_not_preload() -> None:
    """Each vertical step forks one child per SuperNode; a module the server did not preload is
    imported again in every child (Flower's ClientApp modules were: 10 steps on 30,000 rows took
    61 s, 43 s preloaded, bench/ab_vertical.py)."""
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTED_BY_A_CHILD], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_run_whose_superexec_is_gone_ends_within_seconds(tmp_path: Path) -> None:
    """The real `flwr-clientapp` main, warm, against a Runtime API nobody serves: its SuperExec (a
    stand-in process named by `--parent-pid`) is killed, and the run ends within seconds. A warm run
    is the warm server's child, not the SuperExec's: with a job's runner killed mid-round such runs
    sat blocked for minutes, and Flower's own monitor took 10 s here (xgate's watch: 0.1 s)."""
    sock = tmp_path / "s"
    real = tmp_path / "real-clientapp"
    real.write_text("#!/bin/sh\nexit 3\n")
    real.chmod(0o700)
    forwarder = warm_clientapp.install(tmp_path / "bin", sock, real)
    server = subprocess.Popen([sys.executable, "-m", "federated.warm_clientapp", "serve", str(sock)])
    superexec = subprocess.Popen(["/bin/sleep", "600"])
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        run = subprocess.Popen(
            [str(forwarder), "--runtime-api-address", "127.0.0.1:9", "--token", "t", "--insecure",
             "--parent-pid", str(superexec.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(3)
        assert run.poll() is None, "the run ended before its SuperExec did: the test shows nothing"
        superexec.kill()
        superexec.wait(10)
        ended = time.monotonic()
        assert run.wait(timeout=30) != 0
        assert time.monotonic() - ended < 3, "the run outlived its SuperExec"
    finally:
        for proc in (superexec, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
