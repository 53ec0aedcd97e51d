"""docs/THREAT_MODEL.md maps each threat to the tests that cover it: every reference must name a
test that exists, so the document cannot silently drift from the suite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "THREAT_MODEL.md"
_ABBREV = re.compile(r"^\| ([A-Z0-9]+) \| `(tests/[\w/]+\.py)`", re.MULTILINE)
_REF = re.compile(r"\b([A-Z][A-Z0-9]+)::(test_\w+)")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_threat_model_reference_names_an_existing_test() -> None:
    text = DOC.read_text()
    files = dict(_ABBREV.findall(text))
    refs = _REF.findall(text)
    assert files and len(refs) > 50  # the table and the references were found at all
    missing_files = sorted({a for a, _ in refs if a not in files and a != "ALIAS"})  # ALIAS: the syntax
    assert not missing_files, f"abbreviations without a file in the table: {missing_files}"
    names = {a: _test_names(ROOT / f) for a, f in files.items()}
    missing = sorted({f"{a}::{t}" for a, t in refs if a in names and t not in names[a]})
    assert not missing, f"THREAT_MODEL.md names tests that do not exist: {missing}"
