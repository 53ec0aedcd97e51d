"""Node-store access for training, plus writers for test/benchmark stores and a synthetic generator.

The reader is a small private adapter over the node store's SQLite schema (`elements`,
`element_values`, `datasets`, see nodes/store.py), opened read-only: training needs a whole
column at a time and the element's declared type and range (for encoding), which a single
pivot query serves faster than per-subject lookups. Sealed (encrypted-at-rest) columns are
refused: training on them needs the node's column key, which is wired in nodes/, not here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from xgate.errors import InvalidInput, NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS elements (
    id TEXT PRIMARY KEY, agency TEXT NOT NULL, type TEXT NOT NULL, unit TEXT NOT NULL,
    min INTEGER NOT NULL, max INTEGER NOT NULL, classification TEXT NOT NULL,
    description TEXT NOT NULL, dataset TEXT NOT NULL, sealed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS element_values (
    element TEXT NOT NULL, pseudonym TEXT NOT NULL, value,
    PRIMARY KEY (element, pseudonym)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, source_sha256 TEXT NOT NULL, rows INTEGER NOT NULL, loaded_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class ElementInfo:
    id: str
    type: str  # int | flag | category
    min: int
    max: int


@dataclass(frozen=True)
class Column:
    """One column to write: integer values, NaN-free, with its declared type and range."""

    values: np.ndarray
    type: str = "int"
    min: int | None = None
    max: int | None = None


def _connect_ro(path: Path) -> sqlite3.Connection:
    # The full path: a bare file name does not say which node's store is missing.
    if not path.exists():
        raise NotFound(f"node store '{path.absolute()}' does not exist")
    if path.is_dir():
        raise InvalidInput(f"node store '{path.absolute()}' is a directory, not a store file")
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)


def element_info(path: Path, elements: Sequence[str]) -> list[ElementInfo]:
    with _connect_ro(path) as conn:
        rows = {r[0]: r for r in conn.execute("SELECT id, type, min, max, sealed FROM elements").fetchall()}
    out = []
    for e in elements:
        if e not in rows:
            raise NotFound(f"this node offers no data element '{e}'")
        if rows[e][4]:
            raise InvalidInput(f"element '{e}' is sealed at rest; training on sealed columns is not wired")
        out.append(ElementInfo(e, str(rows[e][1]), int(rows[e][2]), int(rows[e][3])))
    return out


def held_elements(path: Path) -> list[str]:
    with _connect_ro(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM elements ORDER BY id")]


def pseudonyms(path: Path) -> list[str]:
    with _connect_ro(path) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT pseudonym FROM element_values ORDER BY 1")]


def read_matrix(
    path: Path, elements: Sequence[str], subjects: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """(pseudonyms, float64 matrix rows=subjects cols=elements, NaN where missing)."""
    element_info(path, elements)  # existence + not sealed
    subj = list(subjects) if subjects is not None else pseudonyms(path)
    index = {p: i for i, p in enumerate(subj)}
    out = np.full((len(subj), len(elements)), np.nan)
    with _connect_ro(path) as conn:
        for j, e in enumerate(elements):
            for p, v in conn.execute("SELECT pseudonym, value FROM element_values WHERE element = ?", (e,)):
                i = index.get(p)
                if i is not None:
                    out[i, j] = v
    return subj, out


def store_digest(path: Path, elements: Sequence[str], key: bytes) -> str:
    """HMAC-SHA256 (RFC 2104), keyed by the node, over the datasets' source digests and row counts
    that feed these elements (no values hashed here). Keyed: the sources' plain SHA-256 would let
    anyone who knows all records but one test a guess of that one offline."""
    with _connect_ro(path) as conn:
        rows = conn.execute(
            "SELECT DISTINCT d.name, d.source_sha256, d.rows FROM datasets d JOIN elements e"
            " ON e.dataset = d.name WHERE e.id IN (SELECT value FROM json_each(?)) ORDER BY 1",
            (json.dumps(list(elements)),),
        ).fetchall()
    if len(key) < 16:
        raise ValueError("a data digest key must be at least 16 bytes")
    return hmac.new(key, repr(rows).encode(), hashlib.sha256).hexdigest()


def write_store(path: Path, dataset: str, subjects: Sequence[str], columns: Mapping[str, Column]) -> None:
    """Write (or replace) one dataset into a node store with the node schema (tests, bench)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA)
        conn.execute("DELETE FROM elements WHERE dataset = ?", (dataset,))
        for eid, col in columns.items():
            vals = np.asarray(col.values)
            if vals.shape != (len(subjects),):
                raise InvalidInput(f"column '{eid}' has the wrong length")
            ints = vals.astype(np.int64)
            lo = int(ints.min()) if col.min is None else col.min
            hi = int(ints.max()) if col.max is None else col.max
            conn.execute("DELETE FROM element_values WHERE element = ?", (eid,))
            conn.execute(
                "INSERT OR REPLACE INTO elements VALUES (?,?,?,?,?,?,?,?,?,0)",
                (eid, eid.split(".")[0], col.type, "unit", lo, hi, "general", "", dataset),
            )
            conn.executemany(
                "INSERT INTO element_values VALUES (?,?,?)",
                zip([eid] * len(subjects), subjects, ints.tolist(), strict=True),
            )
            h.update(eid.encode())
            h.update(ints.tobytes())
        conn.execute(
            "INSERT OR REPLACE INTO datasets VALUES (?,?,?,?)",
            (dataset, h.hexdigest(), len(subjects), datetime.now(UTC).isoformat()),
        )


# -- synthetic data (tests, demo): a seeded logistic ground truth ---------------------------------


def synthetic_population(n: int, seed: int = 0) -> tuple[list[str], dict[str, Column], np.ndarray]:
    """n subjects with 6 integer features and a binary label depending on all of them."""
    rng = np.random.default_rng(seed)
    subj = [hashlib.sha256(f"synthetic-{seed}-{i}".encode()).hexdigest()[:32] for i in range(n)]
    age = rng.integers(18, 90, n)
    income = np.round(rng.lognormal(8.0, 1.0, n)).clip(0, 2_000_000)
    months = rng.integers(0, 481, n)
    disabled = (rng.random(n) < 0.1).astype(np.int64)
    region = rng.integers(0, 4, n)
    visits = rng.poisson(3, n).clip(0, 100)
    z = (
        -1.0
        + 0.03 * (age - 50)
        + 0.8 * (np.log1p(income) - 8.0)
        - 0.004 * (months - 240)
        + 1.2 * disabled
        + 0.5 * (region == 2)
        + 0.15 * (visits - 3)
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    cols = {
        "civil.age": Column(age, "int", 0, 130),
        "tax.income": Column(income, "int", 0, 2_000_000),
        "hrss.months": Column(months, "int", 0, 600),
        "civil.disabled": Column(disabled, "flag", 0, 1),
        "civil.region": Column(region, "category", 0, 3),
        "health.visits": Column(visits, "int", 0, 100),
        "tax.label": Column(label, "flag", 0, 1),
    }
    return subj, cols, label
