"""Hot reload of a policy directory by polling file fingerprints (mtime, size) in a thread.

A new version replaces the engine only if it loads and validates completely; otherwise the old
engine stays in force, the error is logged and kept in `last_error`. Callers hold the reloader
and call `decide` / `decide_all` on it (or read `.engine` once per request for a consistent view).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from policies.decision import DEFAULT_POLICY_DIR, PolicyEngine
from policies.types import AccessRequest, Decision
from xgate.errors import ConfigError
from xgate.logging import get_logger

log = get_logger("xgate.policies.reload")
_PATTERNS = ("*.cedar", "*.cedarschema", "*.toml")


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for pattern in _PATTERNS:
        for path in directory.rglob(pattern):
            try:
                st = path.stat()
            except OSError:  # vanished between listing and stat: the next poll sees it
                continue
            out.append((path.relative_to(directory).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(sorted(out))


class PolicyReloader:
    def __init__(
        self,
        directory: Path = DEFAULT_POLICY_DIR,
        interval_s: float = 2.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fingerprint = fingerprint(self.directory)
        self._engine = PolicyEngine.load(self.directory, clock)  # the first version must be valid
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def engine(self) -> PolicyEngine:
        return self._engine

    @property
    def version(self) -> str:
        """SHA-256 of the policy set in force."""
        return self._engine.policy_set_hash

    def decide(self, request: AccessRequest) -> Decision:
        return self._engine.decide(request)

    def decide_all(self, requests: Sequence[AccessRequest]) -> Decision:
        return self._engine.decide_all(requests)

    def check_now(self) -> bool:
        """Reload if any file changed; True when a new version is now in force."""
        with self._lock:
            current = fingerprint(self.directory)
            if current == self._fingerprint:
                return False
            self._fingerprint = current
            try:
                engine = PolicyEngine.load(self.directory, self._clock)
            except ConfigError as exc:
                self.last_error = exc.message
                log.warning("policy_reload_rejected", error=exc.message, in_force=self.version)
                return False
            except Exception as exc:  # noqa: BLE001 # never let a bad file kill the watcher or the old engine
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("policy_reload_rejected", error=self.last_error, in_force=self.version)
                return False
            old, self._engine, self.last_error = self.version, engine, None
            log.info("policy_reloaded", previous=old, in_force=engine.policy_set_hash)
            return engine.policy_set_hash != old

    def start(self) -> PolicyReloader:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="policy-reload", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_now()
