"""'Verify whole log' from the console: audit.verify.verify_log in a background thread, with progress.

verify_log is one streaming pass that stops at the first inconsistency and reports no progress.
The console runs two phases: (1) a scan of every entry (leaf hash recomputed, record re-parsed),
counted as it goes and listing *every* altered entry, not just the first; (2) the authoritative
verify_log over the same database (tree nodes, subject index, checkpoint signatures, witnesses).
The job passes only if verify_log passes; the scan exists for progress and for the full list.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.checkpoints import CosignatureVerifier, EccKey
from audit.read import scan_entries
from audit.verify import verify_log
from xgate.errors import ConfigError, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.console")
CHUNK = 2000
MAX_LISTED = 200


class LogVerification:
    """At most one verification runs at a time; `status()` is safe to poll from any thread."""

    def __init__(
        self,
        db_path: Path,
        public_key: EccKey | None,
        witnesses: Sequence[CosignatureVerifier] = (),
        on_finish: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.db_path = db_path
        self.public_key = public_key
        self.witnesses = tuple(witnesses)
        self.on_finish = on_finish
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state: dict[str, Any] = {"state": "idle"}

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state, altered=list(self._state.get("altered", [])))

    def _set(self, **fields: Any) -> None:
        with self._lock:
            self._state.update(fields)

    def start(self, started_by: str) -> dict[str, Any]:
        """Start a run unless one is running; returns the current status either way."""
        if self.public_key is None:
            raise ConfigError("the log public key is not configured: the whole log cannot be verified here")
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return dict(self._state)
            self._state = {
                "state": "running",
                "phase": "entries",
                "scanned": 0,
                "total": None,
                "altered": [],
                "started_by": started_by,
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            self._thread = threading.Thread(target=self._run, name="console-verify-log", daemon=True)
            self._thread.start()
            return dict(self._state)

    def wait(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            self._scan()
            self._set(phase="tree")
            assert self.public_key is not None
            report = verify_log(self.db_path, self.public_key, witnesses=self.witnesses)
            result = {"state": "passed", "report": asdict(report) | {"root": report.root.hex()}}
        except XgateError as exc:
            result = {"state": "failed", "error": {"code": exc.code, "message": exc.message, "details": exc.details}}
        except Exception as exc:  # noqa: BLE001 # the thread must always finish with a state
            log.error("console_verify_failed", error=type(exc).__name__)
            result = {"state": "failed", "error": {"code": "internal_error", "message": "verification crashed"}}
        self._set(
            **result,
            phase="done",
            seconds=round(time.monotonic() - t0, 2),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        if self.on_finish is not None:
            try:
                self.on_finish(self.status())
            except XgateError as exc:
                log.error("console_verify_record_failed", error=exc.code)

    def _scan(self) -> None:
        for step in scan_entries(self.db_path, CHUNK):
            with self._lock:
                self._state["total"] = step.total
                self._state["scanned"] = step.scanned
                listed = self._state["altered"]
                listed.extend(step.altered[: max(0, MAX_LISTED - len(listed))])
