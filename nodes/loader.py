"""Load an agency's CSV or Parquet extract into its node store through a mapping file.

The mapping names, per column, the data element it feeds and that element's type, unit, range
and classification; these must agree with the federation catalogue. Every row is validated and
a file with any invalid row is refused as a whole, listing row numbers (one count per row, however
many of its cells are wrong): nothing is silently dropped and a half-loaded dataset never serves a
check. A `category` column may hold the catalogue's category labels (mapped to their codes, in the
catalogue's order) or the codes themselves; a label the catalogue does not list is refused.

`parse_file` validates the whole file without touching any store, so a refused file leaves no
store behind (`xgate node load` opens the store only after parsing succeeded).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from nodes.store import NodeStore
from policies.catalogue import AgencyId, Catalogue, Classification, DataElement, ElementId, ElementType
from xgate.errors import ConfigError, InvalidInput, NotFound
from xgate.pseudonym import Pseudonymiser
from xgate.tomlfile import load_model

MAX_REPORTED_ERRORS = 50
MAX_UNKNOWN_LABELS = 10


class DatasetHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    agency: AgencyId
    subject_column: str = Field(min_length=1)


class ColumnMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: str = Field(min_length=1)
    element: ElementId
    type: ElementType
    unit: str
    min: int
    max: int
    classification: Classification
    required: bool = False


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: DatasetHeader
    columns: list[ColumnMapping] = Field(min_length=1)


@dataclass(frozen=True)
class LoadReport:
    dataset: str
    rows: int
    values: int
    source_sha256: str


def load_mapping(path: Path, catalogue: Catalogue) -> tuple[Mapping, list[DataElement]]:
    mapping, _ = load_model(path, Mapping, "mapping")
    elements: list[DataElement] = []
    for col in mapping.columns:
        try:
            declared = catalogue.get(col.element)
        except NotFound as exc:
            raise ConfigError(f"mapping {path}: column '{col.column}': {exc.message}") from exc
        if declared.agency != mapping.dataset.agency:
            raise ConfigError(f"mapping {path}: element '{col.element}' belongs to agency '{declared.agency}'")
        for attr in ("type", "unit", "min", "max", "classification"):
            if getattr(col, attr) != getattr(declared, attr):
                raise ConfigError(
                    f"mapping {path}: column '{col.column}': {attr} {getattr(col, attr)!r} disagrees with "
                    f"the catalogue's {getattr(declared, attr)!r} for '{col.element}'"
                )
        elements.append(declared)
    return mapping, elements


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number as a person counts it, with the header as row 1, cells as text)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for i, record in enumerate(table.to_pylist(), start=2):
            yield i, {k: "" if v is None else str(v) for k, v in record.items()}
        return
    with path.open(newline="", encoding="utf-8") as handle:
        for i, record in enumerate(csv.DictReader(handle), start=2):
            yield i, {k: (v or "") for k, v in record.items() if k is not None}


def _category_codes(element: DataElement) -> dict[str, int]:
    """Label -> code, exact and case-folded (a label differing only in case from two is ambiguous)."""
    codes = {label: i for i, label in enumerate(element.categories)}
    folded: dict[str, int] = {}
    clashes: set[str] = set()
    for label, i in codes.items():
        key = label.casefold()
        if key in folded:
            clashes.add(key)
        folded[key] = i
    for key in clashes:
        del folded[key]
    return {**{k: v for k, v in folded.items() if k not in codes}, **codes}


class _UnknownLabel(ValueError):
    pass


def _parse(col: ColumnMapping, cell: str, codes: dict[str, int] | None = None) -> int | None:
    text = cell.strip()
    if not text:
        if col.required:
            raise ValueError(f"column '{col.column}' is required")
        return None
    if codes is not None and not _is_int(text):
        code = codes.get(text, codes.get(text.casefold()))
        if code is None:
            raise _UnknownLabel(f"column '{col.column}' holds a label that is not one of the catalogue's categories")
        return code
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"column '{col.column}' is not an integer") from None
    if not col.min <= value <= col.max:
        raise ValueError(f"column '{col.column}' is outside {col.min}..{col.max}")
    return value


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ParsedDataset:
    """A validated file, ready for `NodeStore.replace_dataset` (values are (element, pseudonym, value))."""

    name: str
    elements: list[DataElement]
    values: list[tuple[str, str, int]]
    rows: int
    source_sha256: str


def parse_file(source: Path, mapping_path: Path, catalogue: Catalogue, pseudonymiser: Pseudonymiser) -> ParsedDataset:
    """Validate every row of the file; raise InvalidInput naming the invalid rows (nothing is stored)."""
    mapping, elements = load_mapping(mapping_path, catalogue)
    if not source.exists():
        raise InvalidInput(f"data file {source} does not exist")
    codes = {
        col.column: _category_codes(el) if el.type is ElementType.CATEGORY and el.categories else None
        for col, el in zip(mapping.columns, elements, strict=True)
    }
    errors: list[str] = []
    unknown: set[str] = set()
    values: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    rows = 0
    first = True
    for rownum, record in read_rows(source):
        if first:
            wanted = [mapping.dataset.subject_column] + [c.column for c in mapping.columns]
            absent = [c for c in wanted if c not in record]
            if absent:
                raise InvalidInput(f"{source}: missing column(s) {', '.join(absent)}")
            first = False
        rows += 1
        try:
            pseudonym = pseudonymiser.pseudonym(record[mapping.dataset.subject_column])
        except InvalidInput as exc:
            errors.append(f"row {rownum}: {mapping.dataset.subject_column}: {exc.message}")
            continue
        if pseudonym in seen:
            errors.append(f"row {rownum}: duplicate subject")
            continue
        seen.add(pseudonym)
        problems: list[str] = []
        row_values: list[tuple[str, str, int]] = []
        for col in mapping.columns:
            try:
                value = _parse(col, record[col.column], codes[col.column])
            except ValueError as exc:
                problems.append(str(exc))
                if isinstance(exc, _UnknownLabel) and len(unknown) < MAX_UNKNOWN_LABELS:
                    unknown.add(f"{col.column}={record[col.column].strip()[:40]!r}")
                continue
            if value is not None:
                row_values.append((col.element, pseudonym, value))
        if problems:
            errors.append(f"row {rownum}: {', '.join(problems)}")  # one entry per row, all its problems
        else:
            values.extend(row_values)
    if errors:
        shown = "; ".join(errors[:MAX_REPORTED_ERRORS])
        more = f" (and {len(errors) - MAX_REPORTED_ERRORS} more)" if len(errors) > MAX_REPORTED_ERRORS else ""
        labels = f"; unknown labels: {', '.join(sorted(unknown))}" if unknown else ""
        raise InvalidInput(
            f"{source}: {len(errors)} invalid row(s) of {rows}, nothing loaded: {shown}{more}{labels}",
            invalid_rows=len(errors),
        )
    if rows == 0:
        raise InvalidInput(f"{source}: no data rows")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return ParsedDataset(mapping.dataset.name, elements, values, rows, digest)


def store_parsed(store: NodeStore, parsed: ParsedDataset) -> LoadReport:
    """Replace the dataset in the store, atomically (core-class columns sealed)."""
    with_seal = [(e, e.classification is Classification.CORE) for e in parsed.elements]
    count = store.replace_dataset(
        parsed.name, parsed.source_sha256, with_seal, parsed.values, datetime.now(UTC).isoformat(timespec="seconds")
    )
    return LoadReport(parsed.name, parsed.rows, count, parsed.source_sha256)


def load_file(
    store: NodeStore, source: Path, mapping_path: Path, catalogue: Catalogue, pseudonymiser: Pseudonymiser
) -> LoadReport:
    return store_parsed(store, parse_file(source, mapping_path, catalogue, pseudonymiser))
