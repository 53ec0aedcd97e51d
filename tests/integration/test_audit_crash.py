"""Crash safety: every acknowledged append survives SIGKILL, and the log still verifies."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from audit.checkpoints import generate_key, load_public_key, save_keypair
from audit.store import AuditLog
from audit.testing import ORIGIN
from audit.verify import verify_log

CHILD = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from audit.checkpoints import Signer, load_private_key
    from audit.store import AuditLog
    from audit.testing import record

    db, key, origin, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    signer = Signer(origin, load_private_key(key))
    log = AuditLog.open(db, signer=signer, origin=origin, checkpoint_interval=0.05, writer=kind)
    out = threading.Lock()

    def writer(k):
        i = 0
        while True:
            r = log.append(record(k * 1_000_000 + i))
            with out:
                sys.stdout.write(f"ACK {r.index} {r.leaf_hash.hex()}\\n")
                sys.stdout.flush()
            i += 1

    for k in range(8):
        threading.Thread(target=writer, args=(k,), daemon=True).start()
    threading.Event().wait()
    """
)


def _collect(lines: list[bytes], acked: dict[int, str]) -> None:
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"ACK":  # other stdout lines are log output
            acked[int(parts[1])] = parts[2].decode()


@pytest.mark.integration
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_acknowledged_appends_survive_sigkill(tmp_path: Path, writer: str) -> None:
    """With writer="process" only the producing process is killed: its writer child must notice,
    finish and release the log (the reopen below waits for the single-writer lock)."""
    priv, pub = save_keypair(generate_key(), tmp_path / "log")
    db = tmp_path / "audit.db"
    env = {**os.environ, "XGATE_STRICT_LOGS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(priv), ORIGIN, writer],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    acked: dict[int, str] = {}
    buf = b""
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while len(acked) < 400 and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                _collect(lines, acked)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Lines already in the pipe were acknowledged before the kill: they count too.
        _collect((buf + proc.stdout.read()).split(b"\n")[:-1], acked)  # last piece: no newline yet
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert len(acked) >= 400, "child did not acknowledge enough appends before the deadline"

    with AuditLog.open(db, origin=ORIGIN) as log:
        assert log.size >= max(acked) + 1
        for idx, leaf in acked.items():
            assert log.entry(idx).leaf_hash.hex() == leaf
    report = verify_log(db, load_public_key(pub))
    assert report.size >= len(acked) and report.checkpoints >= 1
