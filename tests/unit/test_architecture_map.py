"""docs/ARCHITECTURE.md's module map names every module of the project packages, and nothing that
is gone: a new, moved or deleted module fails here until the map says what it does."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = ("app", "gateway", "nodes", "client", "federated", "exchange", "policies", "audit", "crypto", "xgate")
_ROW = re.compile(r"^\| `([\w/]+\.(?:py|proto))` \|", re.MULTILINE)


def _modules() -> set[str]:
    """Project modules, less the `__init__.py` files (they only name their package)."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "__init__.py" and "__pycache__" not in path.parts:
                found.add(path.relative_to(ROOT).as_posix())
    return found


def _map_rows() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("## Module map") :]
    section = section[: section.index("\n## ", 1)]
    return _ROW.findall(section)


def test_every_module_has_a_line_in_the_module_map() -> None:
    modules = _modules()
    assert len(modules) > 100  # the packages were found at all
    missing = sorted(modules - set(_map_rows()))
    assert not missing, f"add a line saying what each does to docs/ARCHITECTURE.md's module map: {missing}"


def test_the_module_map_names_no_module_twice_and_none_that_is_gone() -> None:
    rows = _map_rows()
    twice = sorted({r for r in rows if rows.count(r) > 1})
    assert not twice, f"named twice in the module map: {twice}"
    gone = sorted(r for r in rows if not (ROOT / r).is_file())
    assert not gone, f"the module map names files that do not exist: {gone}"
