"""Load an agency's CSV or Parquet extract into its node store through a mapping file.

The mapping names, per column, the data element it feeds and that element's type, unit, range
and classification; these must agree with the federation catalogue. Every row is validated and
a file with any invalid row is refused as a whole, listing row numbers: nothing is silently
dropped and a half-loaded dataset never serves a check.
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


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
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


def _parse(col: ColumnMapping, cell: str) -> int | None:
    text = cell.strip()
    if not text:
        if col.required:
            raise ValueError(f"column '{col.column}' is required")
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"column '{col.column}' is not an integer") from None
    if not col.min <= value <= col.max:
        raise ValueError(f"column '{col.column}' is outside {col.min}..{col.max}")
    return value


def load_file(
    store: NodeStore, source: Path, mapping_path: Path, catalogue: Catalogue, pseudonymiser: Pseudonymiser
) -> LoadReport:
    mapping, elements = load_mapping(mapping_path, catalogue)
    if not source.exists():
        raise InvalidInput(f"data file {source} does not exist")
    errors: list[str] = []
    values: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    rows = 0
    first = True
    for rownum, record in _rows(source):
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
        for col in mapping.columns:
            try:
                value = _parse(col, record[col.column])
            except ValueError as exc:
                errors.append(f"row {rownum}: {exc}")
                continue
            if value is not None:
                values.append((col.element, pseudonym, value))
    if errors:
        shown = "; ".join(errors[:MAX_REPORTED_ERRORS])
        more = f" (and {len(errors) - MAX_REPORTED_ERRORS} more)" if len(errors) > MAX_REPORTED_ERRORS else ""
        raise InvalidInput(
            f"{source}: {len(errors)} invalid row(s), nothing loaded: {shown}{more}", invalid_rows=len(errors)
        )
    if rows == 0:
        raise InvalidInput(f"{source}: no data rows")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with_seal = [(e, e.classification is Classification.CORE) for e in elements]
    count = store.replace_dataset(
        mapping.dataset.name, digest, with_seal, values, datetime.now(UTC).isoformat(timespec="seconds")
    )
    return LoadReport(mapping.dataset.name, rows, count, digest)
