"""Warm ClientApp processes for a SuperNode: Flower's `flwr-clientapp`, forked from a process that
has already imported it.

Flower 1.41's SuperExec starts a fresh `flwr-clientapp` process for every message a SuperNode
receives, found by name on PATH. Importing Flower and the ClientApp costs each one about 1.2 s of
CPU; with six agencies on two cores that was most of a vertical round. A SuperNode started by
`federated.supernode_process` therefore gets:

* a **warm server** (`serve`, one per SuperNode, in its process group and dying with it): it
  imports `flwr-clientapp`'s entry point and xgate's ClientApps once, then forks one child per
  request. Each child adopts the requesting process's argv, environment, working directory and
  standard streams (passed as file descriptors), reseeds what a fork would share (NumPy's global
  generator; Python's `random` reseeds itself, OpenSSL's generator detects the fork), and runs
  Flower's `flwr-clientapp` main as xgate runs it (federated/clientapp_entry.py: xgate's installed
  ClientApps only, never code from the job's app bundle). Children share nothing with each other: each starts from the
  server's pristine state, as a fresh process would.
* a **forwarder** named `flwr-clientapp` first on the SuperNode's PATH (`install`): a few lines of
  standard-library Python that hand their argv, environment and streams to the warm server, relay
  SIGTERM/SIGINT to the child, and exit with its status. If the server cannot be reached it runs
  xgate's `flwr-clientapp` (`install_entry`) instead, so a dead server costs time, never a message.

The socket lives in a 0700 directory (in the SuperNode's home when the path is short enough for a
Unix socket) and the server checks each caller's user id (SO_PEERCRED): only the SuperNode's own
user can ask for a ClientApp, who could start `flwr-clientapp` anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path

# With the entry point's module: the ClientApps, and the Flower modules xgate's `flwr-clientapp` main
# imports when it runs (federated/clientapp_entry.py `install`, `main`). Without the last two every
# forked child imported them again: about 2.5 s more per vertical step with six SuperNodes on two
# cores (bench/ab_vertical.py, 10 steps on 30,000 rows: 61 s; preloaded 43 s, 41 s before that change).
_PRELOAD = (
    "federated.vertical_client",
    "federated.horizontal_client",
    "flwr.supernode.runtime.run_clientapp",
    "flwr.supernode.cli.flwr_clientapp",
)
# Flower's `flwr-clientapp` main loading xgate's installed ClientApps only (federated/clientapp_entry.py)
CLIENTAPP_ENTRY = "federated.clientapp_entry:main"
_MAX_REQUEST = 1 << 20  # argv + environment
_SOCKET_PATH_MAX = 100  # bytes a Unix socket's path may take (107 on Linux), with room to spare
_WARM_DIR_PREFIX = "xgate-warm-"
_SOCKET_SUFFIX_LEN = len("/" + _WARM_DIR_PREFIX) + 8 + len("/s")  # mkdtemp adds 8 random characters

# The forwarder: standard library only, started with -IS (one shebang argument) so it imports nothing else.
FORWARDER = """#!{python} -IS
import json, os, signal, socket, struct, sys
path, real = {socket!r}, {real!r}
try:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
except OSError:
    os.execv(real, [real, *sys.argv[1:]])
payload = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
socket.send_fds(conn, [struct.pack("!I", len(payload)) + payload], [0, 1, 2])
def recv(n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
pid = recv(4)
if pid is None:
    sys.exit(1)
child = struct.unpack("!i", pid)[0]
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, f: os.kill(child, s))
status = recv(4)
sys.exit(1 if status is None else struct.unpack("!i", status)[0])
"""


ENTRY_SCRIPT = """#!{python}
import sys
from federated.clientapp_entry import main
sys.exit(main())
"""


def install_entry(bin_dir: Path, python: str = sys.executable) -> Path:
    """Write xgate's `flwr-clientapp` (federated.clientapp_entry, in a fresh process) as
    `bin_dir/flwr-clientapp` (0700): what a SuperNode runs when no warm server answers, or with
    warm ClientApps off; put bin_dir first on PATH to use it."""
    bin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    script = bin_dir / "flwr-clientapp"
    script.write_text(ENTRY_SCRIPT.format(python=python))
    script.chmod(0o700)
    return script


def install(bin_dir: Path, socket_path: Path, real_clientapp: Path, python: str = sys.executable) -> Path:
    """Write the forwarder as `bin_dir/flwr-clientapp` (0700); put bin_dir first on PATH to use it."""
    bin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    script = bin_dir / "flwr-clientapp"
    script.write_text(FORWARDER.format(python=python, socket=str(socket_path), real=str(real_clientapp)))
    script.chmod(0o700)
    return script


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the forwarder went away")
        data += chunk
    return data


def _read_request(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    header, fds, _flags, _addr = socket.recv_fds(conn, 4, 3)  # the streams come with the length
    if len(header) < 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("a request carries its length and three standard streams")
    (length,) = struct.unpack("!I", header)
    if length > _MAX_REQUEST:
        raise ConnectionError("request too large")
    return json.loads(_recv_exactly(conn, length)), fds


def _run_child(conn: socket.socket, request: dict[str, object], fds: list[int], entry: Callable[[], object]) -> None:
    """In the forked child: become the requested `flwr-clientapp` run, then report the status."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server's auto-reaping is not the child's
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})  # type: ignore[call-overload]
        os.chdir(str(request["cwd"]))
        conn.sendall(struct.pack("!i", os.getpid()))
        import numpy as np

        np.random.seed(np.frombuffer(os.urandom(16), dtype=np.uint32))  # not shared with siblings
        sys.argv = ["flwr-clientapp", *[str(a) for a in list(request["argv"])]]  # type: ignore[call-overload]
        try:
            entry()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001  # reported as the run's status; the traceback went to its stderr
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(struct.pack("!i", code))
        os._exit(code)


def _stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def serve(socket_path: Path, entry_point: str = CLIENTAPP_ENTRY) -> None:
    """Preload, then fork one run of `entry_point` (`module:function`, xgate's `flwr-clientapp`
    main unless a test names another) per request until terminated (SIGTERM)."""
    import importlib

    signal.signal(signal.SIGTERM, _stop)  # from here on, a stop removes what `start` made
    try:
        module_name, _, function = entry_point.partition(":")
        entry = getattr(importlib.import_module(module_name), function)
        for module in _PRELOAD:
            importlib.import_module(module)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            server.bind(str(socket_path))
        finally:
            os.umask(old)
        server.listen(64)
        _accept_forever(server, entry)
    finally:
        if socket_path.parent.name.startswith(_WARM_DIR_PREFIX):  # the directory `start` made
            shutil.rmtree(socket_path.parent, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                socket_path.unlink()


def _accept_forever(server: socket.socket, entry: Callable[[], object]) -> None:
    while True:
        conn, _ = server.accept()
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != os.getuid():  # the directory's 0700 already keeps others out; checked again
            conn.close()
            continue
        try:
            request, fds = _read_request(conn)
        except (ConnectionError, ValueError, OSError):
            conn.close()
            continue
        if os.fork() == 0:
            server.close()
            _run_child(conn, request, fds, entry)
        for fd in fds:
            os.close(fd)
        conn.close()


def _sweep_stale(parent: Path) -> None:
    """Remove the directories of warm servers that were killed before they could (SIGKILL)."""
    for stale in parent.glob(f"{_WARM_DIR_PREFIX}*"):
        try:
            pid = int((stale / "pid").read_text())
        except (OSError, ValueError):
            continue
        if stale.stat().st_uid == os.getuid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


def start(real_clientapp: Path) -> Path:
    """For this SuperNode process, before Flower starts: a warm server in a fresh 0700 directory
    (in FLWR_HOME when the socket's path fits, else the temporary directory), dying with this
    process, and the forwarder first on PATH. Returns the directory, which the server removes when
    it is stopped; one left by a killed server is removed by the next start."""
    import subprocess
    import tempfile

    flwr_home = Path(os.environ.get("FLWR_HOME", tempfile.gettempdir()))
    parent = flwr_home if len(str(flwr_home)) + _SOCKET_SUFFIX_LEN <= _SOCKET_PATH_MAX else None
    parent = parent or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(parent)
    home = Path(tempfile.mkdtemp(prefix=_WARM_DIR_PREFIX, dir=parent))
    sock = home / "s"
    forwarder = install(home / "bin", sock, real_clientapp)
    guard = [sys.executable, "-m", "federated.orphan_guard", str(os.getpid())]
    server = subprocess.Popen([*guard, sys.executable, "-m", "federated.warm_clientapp", "serve", str(sock)])
    (home / "pid").write_text(str(server.pid))
    os.environ["PATH"] = f"{forwarder.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return home


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3) or argv[0] != "serve":
        raise SystemExit("usage: python -m federated.warm_clientapp serve SOCKET [MODULE:FUNCTION]")
    serve(Path(argv[1]), *argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
