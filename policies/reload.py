"""Hot reload of a policy directory by polling file fingerprints (mtime, size) in a thread.

A new version replaces the engine only if it loads and validates completely; otherwise the old
engine stays in force, the error is logged and kept in `last_error`. Callers hold the reloader
and call `decide` / `decide_all` on it (or read `.engine` once per request for a consistent view).

Signed mode (`ca_cert` given: a service with `signed_policies = true`): every load, the first and
every reload, verifies the installed bundle exactly as `xgate config check` does
(crypto/policy_bundle.py `verify_installed`: the manifest is signed by the federation CA and every
policy file has its signed digest, no file added), and a reload also needs a version newer than the
one in force. Anything else (a file edited on disk, the manifest removed or signed by another key, an
older or the same bundle copied back) is refused with `policy_reload_rejected` naming the reason and
the version in force, which stays in force. The directory is verified again after the engine is
loaded, so files changing while they are read (an install in progress) are not taken half-way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from crypto.policy_bundle import Installed, verify_installed
from policies.decision import DEFAULT_POLICY_DIR, PolicyEngine
from policies.types import AccessRequest, Decision
from xgate.errors import ConfigError, XgateError
from xgate.logging import get_logger

log = get_logger("xgate.policies.reload")
_PATTERNS = ("*.cedar", "*.cedarschema", "*.toml", "*.json")  # *.json: the bundle manifest (.bundle.json) too


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
        ca_cert: Path | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.interval_s = interval_s
        self._clock = clock
        self.ca_cert = ca_cert  # signed mode: only CA-signed bundles, each newer than the one in force
        self._lock = threading.Lock()
        self._fingerprint = fingerprint(self.directory)
        self.bundle: Installed | None = None
        if ca_cert is not None:
            self.bundle = verify_installed(self.directory, ca_cert)  # the first version must be signed too
        self._engine = PolicyEngine.load(self.directory, clock)  # the first version must be valid
        if ca_cert is not None and verify_installed(self.directory, ca_cert) != self.bundle:
            raise ConfigError(f"{self.directory} changed while it was loaded: start again")
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

    @property
    def bundle_version(self) -> int | None:
        """The signed bundle's version in force (signed mode), else None."""
        return None if self.bundle is None else self.bundle.version

    def decide(self, request: AccessRequest) -> Decision:
        return self._engine.decide(request)

    def decide_all(self, requests: Sequence[AccessRequest]) -> Decision:
        return self._engine.decide_all(requests)

    def _reject(self, reason: str) -> bool:
        self.last_error = reason
        log.warning(
            "policy_reload_rejected",
            error=reason,
            directory=str(self.directory),
            in_force=self.version,
            bundle_version=self.bundle_version,
        )
        return False

    def _verified_newer(self) -> Installed:
        """Signed mode: the directory as it stands is a CA-signed bundle newer than the one in force."""
        assert self.ca_cert is not None and self.bundle is not None
        candidate = verify_installed(self.directory, self.ca_cert)
        if candidate.version <= self.bundle.version:
            raise ConfigError(
                f"policy bundle version {candidate.version} is not newer than version {self.bundle.version} "
                "in force: refusing an older or replayed bundle"
            )
        return candidate

    def _changed_since(self, ca: Path, verified: Installed | None) -> str | None:
        """Why the directory is no longer the bundle `verified` (None: it still is)."""
        try:
            after = verify_installed(self.directory, ca)
        except XgateError as exc:
            return exc.message
        return None if after == verified else f"now bundle version {after.version}"

    def check_now(self) -> bool:
        """Reload if any file changed; True when a new version is now in force."""
        with self._lock:
            current = fingerprint(self.directory)
            if current == self._fingerprint:
                return False
            self._fingerprint = current
            ca = self.ca_cert
            try:
                candidate = self._verified_newer() if ca is not None else None
                engine = PolicyEngine.load(self.directory, self._clock)
                if ca is not None and (changed := self._changed_since(ca, candidate)):
                    self._fingerprint = ()  # look again at the next poll
                    return self._reject(f"the policy directory changed while it was loaded ({changed})")
            except XgateError as exc:
                return self._reject(exc.message)
            except Exception as exc:  # noqa: BLE001 # never let a bad file kill the watcher or the old engine
                return self._reject(f"{type(exc).__name__}: {exc}")
            old, old_bundle = self.version, self.bundle
            self._engine, self.bundle, self.last_error = engine, candidate or self.bundle, None
            log.info(
                "policy_reloaded", previous=old, in_force=engine.policy_set_hash, bundle_version=self.bundle_version
            )
            return engine.policy_set_hash != old or self.bundle != old_bundle

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
