"""A value loaded from one policy-directory file, loaded again whenever that file changes.

The registries of signers (consent managers, approvers) are edited by the federation operator
while the gateway and the nodes run; each read compares the file's (mtime, size) with the last
load, so a change takes effect at the next request without a restart or a watcher thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class WatchedFile(Generic[T]):
    def __init__(self, path: Path, load: Callable[[Path], T]) -> None:
        self.path = path
        self._load = load
        self._seen: tuple[float, int] | None = None
        self._value: T | None = None

    def current(self) -> T:
        try:
            stat = self.path.stat()
            mark: tuple[float, int] | None = (stat.st_mtime, stat.st_size)
        except FileNotFoundError:
            mark = None  # absent: the loader decides what that means (an empty registry)
        if self._value is None or mark != self._seen:
            self._value = self._load(self.path)
            self._seen = mark
        return self._value
