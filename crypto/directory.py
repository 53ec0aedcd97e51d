"""The federation directory as a live keyring: re-read (and re-verified) when the file changes.

Revoking an agency's signing key or adding a node is done by the federation CA re-issuing the
signed federation.json; gateway and nodes pick it up without a restart. A replacement that does
not verify against the CA, or is older than the one in force (rollback), is refused and logged,
and the verified keyring in force stays.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from crypto.envelope import KeyEntry, Keyring, SigningKey
from crypto.pki import FederationDirectory, load_directory
from xgate.errors import ConfigError, CryptoError, EnvelopeRejected
from xgate.logging import get_logger

log = get_logger("xgate.crypto.directory")


class DirectoryKeyring(Keyring):
    """A Keyring backed by a signed federation.json, reloaded when its mtime or size changes.

    The file is looked at no more than once per ``check_every_s`` (a stat call), so lookups on the
    hot path stay dictionary reads.
    """

    def __init__(
        self,
        path: Path,
        ca_cert: Path | x509.Certificate,
        *,
        check_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.ca_cert = ca_cert
        self.check_every_s = check_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.directory = load_directory(path, ca_cert)  # the first load must succeed (fail closed)
        self._current = self.directory.keyring()
        self._next_check = clock() + check_every_s
        super().__init__()

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            raise ConfigError(f"federation directory {self.path} is missing") from None
        return st.st_mtime_ns, st.st_size

    def refresh(self) -> bool:
        """Reload if the file changed; True when a new directory took effect."""
        with self._lock:
            try:
                stamp = self._stat()
            except ConfigError:
                log.error("federation_directory_missing", kept_issued_at=self.directory.issued_at)
                return False
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                fresh = load_directory(self.path, self.ca_cert)
            except (ConfigError, CryptoError) as exc:
                log.error("federation_directory_refused", error=exc.code, kept_issued_at=self.directory.issued_at)
                return False
            if not _newer(fresh, self.directory):
                log.error("federation_directory_rollback_refused", offered=fresh.issued_at,
                          kept_issued_at=self.directory.issued_at)  # fmt: skip
                return False
            self.directory, self._current = fresh, fresh.keyring()
            log.info("federation_directory_reloaded", issued_at=fresh.issued_at, keys=len(self._current))
            return True

    def _maybe_refresh(self) -> None:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self.check_every_s
            self.refresh()

    def add(self, entry: KeyEntry) -> None:
        raise ConfigError("keys of a federation directory come from the signed directory file only")

    def get(self, key_id: str) -> KeyEntry | None:
        self._maybe_refresh()
        return self._current.get(key_id)

    def verifier(self, key_id: str) -> Any:
        try:
            return self._current.verifier(key_id)
        except KeyError:  # the directory changed between get() and here and dropped the key
            raise EnvelopeRejected("signing key is no longer in the federation directory", key_id=key_id) from None

    def __len__(self) -> int:
        return len(self._current)


def _newer(fresh: FederationDirectory, current: FederationDirectory) -> bool:
    try:
        return fresh.federation == current.federation and dt.datetime.fromisoformat(
            fresh.issued_at
        ) >= dt.datetime.fromisoformat(current.issued_at)
    except ValueError:
        return False


class SigningKeyFile(SigningKey):
    """A party's signing key that follows its file: `xgate pki install` of a renewal takes effect
    within ``check_every_s`` without a restart. A replacement that does not load is refused and
    logged; the key in force stays."""

    def __init__(self, path: Path, *, check_every_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = _stamp(path)
        self._key_in_force = SigningKey.load(path)
        self._next_check = clock() + check_every_s
        first = self._key_in_force
        super().__init__(first._key, first.agency, first.kind)

    def current(self) -> SigningKey:
        now = self._clock()
        if now >= self._next_check:
            with self._lock:
                if now >= self._next_check:
                    self._next_check = now + self.check_every_s
                    self._reload()
        return self._key_in_force

    def _reload(self) -> None:
        try:
            stamp = _stamp(self.path)
        except ConfigError:
            log.error("signing_key_missing", kept_key_id=self._key_in_force.key_id)
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            fresh = SigningKey.load(self.path)
        except ConfigError as exc:
            log.error("signing_key_refused", error=exc.code, kept_key_id=self._key_in_force.key_id)
            return
        log.info("signing_key_reloaded", key_id=fresh.key_id, previous_key_id=self._key_in_force.key_id)
        self._key_in_force = fresh
        SigningKey.__init__(self, fresh._key, fresh.agency, fresh.kind)  # what readers of .key_id see

    def sign(self, data: bytes) -> bytes:
        return self.current().sign(data)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        raise ConfigError(f"signing key {path} is missing") from None
    return st.st_mtime_ns, st.st_size
