"""Load an agency's CSV or Parquet extract into its node store through a mapping file.

The mapping names, per column, the data element it feeds and that element's type, unit, range
and classification; these must agree with the federation catalogue. Every row is validated and
a file with any invalid row is refused as a whole, listing row numbers (one count per row, however
many of its cells are wrong): nothing is silently dropped and a half-loaded dataset never serves a
check. A `category` column may hold the catalogue's category labels (mapped to their codes, in the
catalogue's order) or the codes themselves; a label the catalogue does not list is refused. A label
is matched exactly, else ignoring case if only one label matches so: with labels "north" and
"North", "NORTH" is ambiguous and refused. An element with a label that looks like an integer takes
no codes: with labels "1".."4", "1" is the label "1" (code 0) and "0" is an unknown label.

Numbers are ASCII decimals. A column whose mapping sets `decimals = d` is written in units 10^d
times the element's (yuan with `decimals = 2` for an element in fen): the stored value is the cell
times 10^d, exactly (decimal arithmetic, never a float), and a cell with more places than that is
refused, never rounded. Without `decimals`, "43.0" is 43 (spreadsheets and pandas write integer
columns with gaps so) and "43.5" is refused, saying so. A `flag` column also takes "true" and
"false" in any case (Parquet booleans arrive so).

Row numbers are the file's line numbers (the header is line 1; blank lines count, and a record
spanning lines is numbered by its first); a Parquet file's header counts as row 1 likewise. A file
that is not UTF-8 text, a row with another number of cells than the header, a header naming a
column twice, a quote still open at the end of the file, or a quoted cell holding lines that split
into as many cells as the header (rows swallowed by an unbalanced quote; other quoted newlines are
fine) is refused as a whole, with the line and, for a quote, the column.

`parse_file` validates the whole file without touching any store, so a refused file leaves no
store behind (`xgate node load` opens the store only after parsing succeeded).
"""

from __future__ import annotations

import codecs
import csv
import decimal
import hashlib
import io
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from nodes.store import NodeStore
from policies.catalogue import AgencyId, Catalogue, Classification, DataElement, ElementId, ElementType
from xgate.errors import ConfigError, InvalidInput, NotFound
from xgate.pseudonym import Pseudonymiser
from xgate.tomlfile import load_model, locate

MAX_REPORTED_ERRORS = 50
MAX_UNKNOWN_LABELS = 10
MAX_LISTED_LABELS = 20  # of an element, in a message
# ASCII only: int() and Decimal() also take "2_6", other scripts' digits, exponents and "NaN".
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
MAX_DECIMALS = 9
_FLAG_WORDS = {"false": 0, "true": 1}
_EXACT = decimal.Context(prec=100, traps=[decimal.Inexact])  # cells are at most 64 characters


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
    # The file writes this column in units 10^decimals times the element's: cells are scaled by it.
    decimals: int = Field(0, ge=0, le=MAX_DECIMALS)


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
    mapping, raw = load_model(path, Mapping, "mapping")
    text = raw.decode("utf-8", errors="replace")
    columns: set[str] = set()
    feeds: dict[str, str] = {}
    for i, col in enumerate(mapping.columns):
        # Two columns on one element would both be stored under (element, pseudonym).
        if col.column in columns:
            raise ConfigError(f"{_at(path, text, i, 'column')}: column '{col.column}' is mapped twice")
        if col.element in feeds:
            raise ConfigError(
                f"{_at(path, text, i, 'element')}: element '{col.element}' is fed by two columns, "
                f"'{feeds[col.element]}' and '{col.column}'"
            )
        if col.decimals and col.type is not ElementType.INT:
            raise ConfigError(
                f"{_at(path, text, i, 'decimals')}: column '{col.column}' is a {col.type.value}; "
                "only an int column takes decimals"
            )
        columns.add(col.column)
        feeds[col.element] = col.column
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


def _at(path: Path, text: str, index: int, key: str) -> str:
    line = locate(text, ("columns", index, key))
    return f"mapping {path}" + (f" line {line}" if line else "")


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number: the file's line number, with the header as row 1; cells as text)."""
    return _rows(path, _read_bytes(path))


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise InvalidInput(f"data file {path} is a directory, not a CSV or Parquet file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"data file {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"data file {path}: cannot read it ({exc.strerror})") from None


def _rows(path: Path, raw: bytes) -> Iterator[tuple[int, dict[str, str]]]:
    if path.suffix.lower() == ".parquet":
        return _parquet_rows(path, raw)
    return _csv_rows(path, raw)


def _duplicate(names: list[str]) -> str | None:
    """The first name given twice (blank names are unnamed columns, which no mapping can use)."""
    seen: set[str] = set()
    for name in names:
        if name in seen and name.strip():
            return name
        seen.add(name)
    return None


def _parquet_rows(path: Path, raw: bytes) -> Iterator[tuple[int, dict[str, str]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(pa.BufferReader(raw))
        twice = _duplicate(parquet.schema_arrow.names)
        if twice is not None:
            raise InvalidInput(f"{path}: the header names column '{twice}' twice")
        table = parquet.read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{path}: not a readable Parquet file ({reason})") from None
    for i, record in enumerate(table.to_pylist(), start=2):
        yield i, {k: "" if v is None else str(v) for k, v in record.items()}


def _csv_rows(path: Path, raw: bytes) -> Iterator[tuple[int, dict[str, str]]]:
    body = raw.removeprefix(codecs.BOM_UTF8)  # spreadsheet exports start with one ("utf-8-sig")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise InvalidInput(
            f"{path} line {line}: not UTF-8 text (byte 0x{body[exc.start]:02x}); save the file as UTF-8"
        ) from None
    ended = False

    def lines() -> Iterator[str]:
        # The reader asks for a line past the last only while inside a quoted cell, and then returns
        # that record as if complete: a record read after the lines ran out is a quote left open.
        nonlocal ended
        yield from io.StringIO(text, newline="")
        ended = True

    reader = csv.reader(lines())
    header: list[str] | None = None
    next_line = 1
    try:
        for cells in reader:
            line, next_line = next_line, reader.line_num + 1  # a record spanning lines: its first
            if ended:
                last = len(cells) - 1
                opens = _opens(line, _line_of(line, cells, last))
                raise InvalidInput(f"{path} line {line}: {_cell(header, last)} {opens} that is never closed")
            if not cells or (len(cells) == 1 and not cells[0].strip()):  # a blank, or blank but for spaces
                continue  # a blank line
            if header is None:
                twice = _duplicate(cells)
                if twice is not None:
                    raise InvalidInput(f"{path} line {line}: the header names column '{twice}' twice")
                header = cells
                continue
            if reader.line_num > line:
                _refuse_swallowed_rows(path, line, header, cells)
            if len(cells) != len(header):
                raise InvalidInput(
                    f"{path} line {line}: {len(cells)} cells, the header has {len(header)}{_separator_hint(header)}"
                )
            yield line, dict(zip(header, cells, strict=True))
    except csv.Error as exc:  # the cell size limit, which a quote left open reaches in a large file
        runs = f", running to line {reader.line_num} (an unbalanced quote?)" if reader.line_num > next_line else ""
        raise InvalidInput(f"{path} line {next_line}: {exc}{runs}") from None


def _with_near_names(absent: list[str], record: dict[str, str]) -> list[str]:
    """Each missing column, with the header's name that differs from it only in case or spaces
    (the usual cause: `Age` or ` age` for `age`), so the message says what to rename."""
    near = {name.strip().casefold(): name for name in record}
    return [
        f"{c} (the header has {near[c.strip().casefold()]!r})" if c.strip().casefold() in near else c for c in absent
    ]


def _separator_hint(header: Sequence[str]) -> str:
    """Why the columns do not line up when the file is separated by something other than commas."""
    if len(header) != 1:
        return ""
    found = next((name for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")) if sep in header[0]), None)
    return f" (the header is one column holding {found}: the file must be separated by commas)" if found else ""


_NEWLINE = re.compile(r"\r\n|\r|\n")  # what ends a line for the reader, and so for line numbers


def _refuse_swallowed_rows(path: Path, line: int, header: list[str], cells: list[str]) -> None:
    """Refuse a record whose quoted cell holds lines that look like whole rows of the file.

    A quoted cell may hold newlines (a multi-line note), but one whose lines after its first split
    into as many cells as the header has is most likely an unbalanced quote that swallowed rows.
    """
    for index, cell in enumerate(cells):
        inner = _NEWLINE.split(cell)[1:]
        rows = sum(1 for text in inner if len(text.split(",")) >= len(header))
        if rows:
            start = _line_of(line, cells, index)
            held = "what looks like 1 whole row" if rows == 1 else f"what look like {rows} whole rows"
            raise InvalidInput(
                f"{path} line {line}: {_cell(header, index)} {_opens(line, start)} that runs to line "
                f"{start + len(inner)} and holds {held} (an unbalanced quote?)"
            )


def _line_of(line: int, cells: list[str], index: int) -> int:
    """The line on which cell `index` of a record starting on `line` starts."""
    return line + sum(len(_NEWLINE.findall(cell)) for cell in cells[:index])


def _opens(line: int, start: int) -> str:
    return "opens a quote" if start == line else f"opens a quote on line {start}"


def _cell(header: list[str] | None, index: int) -> str:
    if header is None:
        return "the header"
    return f"column '{header[index]}'" if index < len(header) else f"cell {index + 1}"


@dataclass(frozen=True)
class _Labels:
    """A category element's labels, indexed for reading cells (the rules: the module docstring)."""

    labels: tuple[str, ...]
    exact: dict[str, list[int]]  # label -> its codes (several only if the catalogue repeats it)
    folded: dict[str, list[int]]  # case-folded label -> the codes of every label folding to it
    integers: bool  # a label looks like an integer, so integer text is a label, never a code


def _folded(label: str) -> str:
    """A label as matched when not written exactly: one Unicode form (NFC: a decomposed "ü", as some
    exports write it, is the catalogue's composed one), case-folded."""
    return unicodedata.normalize("NFC", label).casefold()


def cell_key(cell: str) -> str:
    """What a cell means, for comparing cells as the loader reads them: a number by its value
    ("1", "1.0" and "+1.00" are one), any other text as a label (spaces around, Unicode form and
    case aside)."""
    text = _folded(cell.strip())
    if len(text) <= 64 and _DECIMAL.fullmatch(text) is not None:
        number = decimal.Decimal(text)
        return format(number.normalize(_EXACT), "f") if number else "0"  # all its digits: no rounding
    return text


def _labels(element: DataElement) -> _Labels:
    exact: dict[str, list[int]] = {}
    folded: dict[str, list[int]] = {}
    for code, label in enumerate(element.categories):
        exact.setdefault(label, []).append(code)
        if (composed := unicodedata.normalize("NFC", label)) != label:
            exact.setdefault(composed, []).append(code)
        folded.setdefault(_folded(label), []).append(code)
    integers = any(_INTEGER.fullmatch(label.strip()) for label in element.categories)
    return _Labels(element.categories, exact, folded, integers)


def _listed(labels: _Labels, codes: list[int]) -> str:
    shown = ", ".join(repr(labels.labels[c]) for c in codes[:MAX_LISTED_LABELS])
    return shown + (", ..." if len(codes) > MAX_LISTED_LABELS else "")


class _UnknownLabel(ValueError):
    pass


def _parse(col: ColumnMapping, cell: str, labels: _Labels | None = None) -> int | None:
    text = cell.strip()
    if not text:
        if col.required:
            raise ValueError(f"column '{col.column}' is required")
        return None
    is_int = _INTEGER.fullmatch(text) is not None
    if labels is not None:
        # An exact label wins; a case-insensitive match only when no other label also matches so.
        nfc = unicodedata.normalize("NFC", text)
        codes = labels.exact.get(text) or labels.exact.get(nfc) or labels.folded.get(_folded(text), [])
        if len(codes) == 1:
            return codes[0]
        if codes:
            raise ValueError(
                f"column '{col.column}' holds {text[:40]!r}, which matches several of the catalogue's labels "
                f"({_listed(labels, codes)}): write one exactly"
            )
        if labels.integers:  # with labels "1".."4", reading "1" as code 1 would store the label "2"
            accepted = _listed(labels, list(range(len(labels.labels))))
            raise _UnknownLabel(
                f"column '{col.column}' holds a label that is not one of the catalogue's categories "
                f"({accepted}; its labels look like integers, so it takes no codes)"
            )
        if not is_int:
            raise _UnknownLabel(f"column '{col.column}' holds a label that is not one of the catalogue's categories")
    if col.type is ElementType.FLAG:
        if text.lower() in _FLAG_WORDS:
            return _FLAG_WORDS[text.lower()]
        if _DECIMAL.fullmatch(text) is None:
            raise ValueError(f"column '{col.column}' is not a flag (0, 1, true or false)")
    value = _number(col, text, is_int)
    if not col.min <= value <= col.max:
        raise ValueError(f"column '{col.column}' is outside {col.min}..{col.max}")
    return value


def _number(col: ColumnMapping, text: str, is_int: bool) -> int:
    """The cell as a whole number of the element's unit: an integer, or a decimal scaled by
    10^decimals with nothing left over (refused, not rounded, when something is)."""
    if is_int and not col.decimals:
        try:
            return int(text)
        except ValueError:  # past Python's digit limit
            raise ValueError(f"column '{col.column}' is not an integer") from None
    if len(text) > 64 or _DECIMAL.fullmatch(text) is None:
        raise ValueError(f"column '{col.column}' is not {'a number' if col.decimals else 'an integer'}")
    scaled = decimal.Decimal(text).scaleb(col.decimals, context=_EXACT)  # the cell's digits, shifted
    if scaled != scaled.to_integral_value():
        if col.decimals:
            raise ValueError(
                f"column '{col.column}' has more decimal places than its mapping's decimals = {col.decimals}"
            )
        raise ValueError(
            f"column '{col.column}' is not an integer "
            "(it has a fractional part; a mapping's decimals scales such a column)"
        )
    return int(scaled)


@dataclass(frozen=True)
class ParsedDataset:
    """A validated file, ready for `NodeStore.replace_dataset` (values are (element, pseudonym, value))."""

    name: str
    elements: list[DataElement]
    values: list[tuple[str, str, int]]
    rows: int
    source_sha256: str


def parse_file(
    source: Path, mapping_path: Path, catalogue: Catalogue, pseudonymiser: Pseudonymiser, agency: str | None = None
) -> ParsedDataset:
    """Validate every row of the file; raise InvalidInput naming the invalid rows (nothing is stored).
    `agency`: the loading node's; a mapping of another agency's dataset is refused."""
    mapping, elements = load_mapping(mapping_path, catalogue)
    if agency is not None and mapping.dataset.agency != agency:
        raise ConfigError(
            f"mapping {mapping_path} describes a dataset of agency '{mapping.dataset.agency}';"
            f" this node is agency '{agency}': load it at that agency's node"
        )
    raw = _read_bytes(source)  # read once: the rows and the recorded digest are of the same bytes
    categories = {
        col.column: _labels(el) if el.type is ElementType.CATEGORY and el.categories else None
        for col, el in zip(mapping.columns, elements, strict=True)
    }
    errors: list[str] = []
    unknown: set[str] = set()
    values: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    rows = 0
    first = True
    for rownum, record in _rows(source, raw):
        if first:
            wanted = [mapping.dataset.subject_column] + [c.column for c in mapping.columns]
            absent = [c for c in wanted if c not in record]
            if absent:
                named = ", ".join(_with_near_names(absent, record))
                raise InvalidInput(f"{source}: missing column(s) {named}{_separator_hint(list(record))}")
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
                value = _parse(col, record[col.column], categories[col.column])
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
    digest = hashlib.sha256(raw).hexdigest()
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
