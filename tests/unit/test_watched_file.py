"""WatchedFile: the signer registries follow their file without a restart."""

from __future__ import annotations

import os
from pathlib import Path

from policies.watched import WatchedFile


def test_loads_once_then_again_only_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "approvers.toml"
    loads: list[str] = []

    def load(p: Path) -> str:
        text = p.read_text() if p.exists() else ""
        loads.append(text)
        return text

    watched = WatchedFile(path, load)
    assert watched.current() == "" and loads == [""]  # absent: the loader says what that means
    assert watched.current() == "" and len(loads) == 1  # unchanged: not loaded again
    path.write_text("a")
    assert watched.current() == "a" and len(loads) == 2
    assert watched.current() == "a" and len(loads) == 2
    path.write_text("bb")  # a new size is a change even within the same mtime tick
    assert watched.current() == "bb"
    stat = path.stat()
    path.write_text("cc")  # same size: the mtime tells
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert watched.current() == "cc"
    path.unlink()
    assert watched.current() == ""
