"""The audit writer in its own process: SQLite commits and Merkle hashing on the second core.

In one Python process, the writer thread and the threads or event loop producing records share
one GIL, so a busy gateway's appends were bounded by one core. ``ProcessWriter`` keeps the same
contract as ``GroupCommitWriter`` (a batch is acknowledged only once it is durable) but runs the
group-commit writer in a child process that owns the write connection. The parent sends prepared
records (canonical bytes, leaf hash, filter columns, subjects) over a pipe and gets back, per batch,
the first index, the tree size and the root; readers keep using their own connections (WAL).

Failure model: if the child dies, every pending and later append fails with AuditUnavailable
(fail closed). If the parent dies, the child sees end-of-file, commits what it already received
(nothing of it was acknowledged) and exits. Only this module and the child speak the pipe protocol,
so pickle between them is acceptable (both are the same trusted program).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from audit.writer import AppendReceipt, AuditUnavailable, Prepared, Statements
from xgate.errors import ConfigError, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.audit")
START_TIMEOUT_S = 60.0


class ProcessWriter:
    """Parent-side proxy of a child process running ``GroupCommitWriter`` on the log's database."""

    def __init__(self, path: Path, max_batch: int, linger: float) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        cmd = [sys.executable, "-m", "audit.writer_child", str(to_child_r), str(from_child_w), str(path)]
        cmd += [str(max_batch), repr(linger)]
        try:
            self._proc = subprocess.Popen(cmd, pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._out = Connection(to_child_w, readable=False)
        self._in = Connection(from_child_r, writable=False)
        self._send_lock = threading.Lock()  # one message on the pipe at a time
        self._pending_lock = threading.Lock()  # never held while blocked on the pipe
        self._pending: dict[int, tuple[Future[Any], list[Prepared] | None]] = {}
        self._seq = 0
        self._broken = False
        self.closed = False
        if not self._in.poll(START_TIMEOUT_S):
            self._proc.kill()
            raise ConfigError("audit writer process did not start")
        hello = self._in.recv()
        if hello[0] != "hello":
            raise ConfigError(f"audit writer process failed to open the log: {hello[1]}")
        self._size: int = hello[1]
        self._receiver = threading.Thread(target=self._receive, name="audit-writer-receiver", daemon=True)
        self._receiver.start()

    @property
    def size(self) -> int:
        return self._size

    def appends(self, pendings: list[Prepared], gather: bool = True) -> Future[list[AppendReceipt]]:
        payload = [(p.data, p.leaf, p.cols, p.subjects) for p in pendings]
        return self._send("append" if gather else "append_now", payload, pendings)

    def execute(self, statements: Statements) -> Future[None]:
        return self._send("exec", statements, None)

    def _send(self, kind: str, payload: Any, pendings: list[Prepared] | None) -> Future[Any]:
        future: Future[Any] = Future()
        with self._send_lock:
            if self.closed:
                raise ConfigError("audit log is closed")
            if self._broken:
                raise AuditUnavailable("audit writer process is gone")
            self._seq += 1
            with self._pending_lock:
                self._pending[self._seq] = (future, pendings)
            try:
                self._out.send((kind, self._seq, payload))
            except OSError:
                with self._pending_lock:
                    self._pending.pop(self._seq, None)
                self._broken = True
                raise AuditUnavailable("audit writer process is gone") from None
        return future

    def _receive(self) -> None:
        while True:
            try:
                msg = self._in.recv()
            except (EOFError, OSError):
                break
            kind, seq = msg[0], msg[1]
            with self._pending_lock:
                future, pendings = self._pending.pop(seq)
            if kind == "err":
                future.set_exception(AuditUnavailable("audit log write failed"))
            elif pendings is None:
                future.set_result(None)
            else:
                first, size, root = msg[2]
                self._size = max(self._size, size)
                future.set_result(
                    [AppendReceipt(first + i, p.leaf, p.entry_hash, size, root) for i, p in enumerate(pendings)]
                )
        with self._pending_lock:
            self._broken = True
            pending, self._pending = self._pending, {}
        if pending and not self.closed:
            log.error("audit_writer_process_lost", pending=len(pending), code=self._proc.poll())
        for future, _ in pending.values():
            future.set_exception(AuditUnavailable("audit writer process is gone"))

    def close(self) -> None:
        with self._send_lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(OSError):  # a dead child has nothing left to close
                self._out.send(("close", 0, None))
            self._out.close()
        self._receiver.join(timeout=60)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._in.close()


def serve(to_child: Connection, from_child: Connection, path: Path, max_batch: int, linger: float) -> None:
    from audit.db import acquire_writer_lock, connect, load_frontier
    from audit.writer import GroupCommitWriter

    try:
        lock_fd = acquire_writer_lock(path)
        conn = connect(path)
        writer = GroupCommitWriter(conn, load_frontier(conn), max_batch, linger, lock_fd=lock_fd)
    except Exception as exc:  # noqa: BLE001 # reported to the parent, which refuses to open the log
        from_child.send(("fail", exc.message if isinstance(exc, XgateError) else type(exc).__name__))
        return
    send_lock = threading.Lock()

    def reply(msg: tuple[Any, ...]) -> None:
        with send_lock, contextlib.suppress(OSError):  # the parent is gone; nothing to acknowledge to
            from_child.send(msg)

    def on_done(seq: int, batch: bool) -> Any:
        def done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                reply(("err", seq, type(exc).__name__))
            elif batch:
                receipts: list[AppendReceipt] = f.result()
                reply(("ok", seq, (receipts[0].index, receipts[0].tree_size, receipts[0].root)))
            else:
                reply(("ok", seq, None))

        return done

    reply(("hello", writer.size))
    while True:
        try:
            kind, seq, payload = to_child.recv()
        except (EOFError, OSError):
            break  # parent gone: commit what was queued, then exit
        if kind == "close":
            break
        if kind in ("append", "append_now"):
            pendings = [Prepared(data, leaf, "", tuple(cols), tuple(subj)) for data, leaf, cols, subj in payload]
            writer.appends(pendings, gather=kind == "append").add_done_callback(on_done(seq, True))
        elif kind == "exec":
            writer.execute(payload).add_done_callback(on_done(seq, False))
    writer.close()
