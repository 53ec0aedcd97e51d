"""A value loaded from one policy-directory file, loaded again whenever that file changes.

The registries of signers (consent managers, approvers) are edited by the federation operator
while the gateway and the nodes run; each read compares the file's (mtime, size) with the last
load, so a change takes effect at the next request without a restart or a watcher thread.

Signed mode (`bundle` given: the signed policy bundle in force, from the service's PolicyReloader):
a version of the file is loaded only when its SHA-256 is the one that bundle signed. A file edited on
disk, or a newer bundle's file before the reloader has verified that bundle, is refused
(`policy_file_rejected`) and the value loaded before stays in force; with no value yet, the read
fails (ConfigError) rather than trust an unsigned file.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from crypto.policy_bundle import Installed
from xgate.errors import ConfigError
from xgate.logging import get_logger

T = TypeVar("T")
log = get_logger("xgate.policies.watched")
Mark = tuple[float, int, int] | None


class WatchedFile(Generic[T]):
    def __init__(
        self, path: Path, load: Callable[[Path], T], bundle: Callable[[], Installed | None] | None = None
    ) -> None:
        self.path = path
        self._load = load
        self._bundle = bundle
        self._seen: Mark = None
        self._value: T | None = None

    def _mark(self) -> Mark:
        signed = self._bundle() if self._bundle is not None else None
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None  # absent: the loader decides what that means (an empty registry)
        return (stat.st_mtime, stat.st_size, signed.version if signed is not None else 0)

    def _signed_digest_differs(self) -> str | None:
        """Signed mode: why the file as it stands is not the one the bundle in force signed (None: it is)."""
        signed = self._bundle() if self._bundle is not None else None
        if signed is None:
            return None
        try:
            actual: str | None = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except FileNotFoundError:
            actual = None
        if actual == signed.digest(self.path.name):
            return None
        return f"{self.path.name} differs from the signed policy bundle version {signed.version} in force"

    def current(self) -> T:
        mark = self._mark()
        if self._value is None or mark != self._seen:
            self._seen = mark
            why = self._signed_digest_differs()
            if why is None:
                try:
                    value = self._load(self.path)
                except ConfigError as exc:  # a malformed edit: said once, the previous version kept
                    why = exc.message
                else:
                    why = self._signed_digest_differs()  # the file did not change while it was read
                    if why is None:
                        self._value = value
                        return value
            log.warning("policy_file_rejected", file=str(self.path), error=why, kept_previous=self._value is not None)
            if self._value is None:  # nothing trusted loaded yet: every read looks again
                self._seen = None
                raise ConfigError(f"{why}: refusing to use it")
        return self._value


def registry_entries(path: Path, table: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The `[[table]]` entries of a signer registry file (consent managers, approvers, requesters),
    each with exactly `fields`; none when the file is absent (nobody registered); ConfigError naming
    the file and the entry otherwise. A BOM a Windows editor writes is accepted."""
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    entries = data.get(table, [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: {table} must be an array of tables ([[{table}]])")
    named = ", ".join(fields[:-1]) + f" and {fields[-1]}" if len(fields) > 1 else fields[0]
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != set(fields):
            raise ConfigError(f"{path}: {table} #{i + 1} needs exactly {named}")
    return entries
