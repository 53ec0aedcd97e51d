"""`xgate train split`: a reproducible evaluation holdout, written as pseudonyms at the node.

The node reads its own extract, pseudonymises each national id with its own key (the federation
pseudonym key, as `xgate node load` does) and writes the pseudonyms of the reserved subjects, one
a line, sorted: national ids never appear in the file. The draw is a keyed function of the
pseudonym and the seed, so every node holding the same subjects reserves the same ones.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from nodes.config import load_node_config
from nodes.loader import MAX_REPORTED_ERRORS, cell_key, read_rows
from xgate.errors import InvalidInput
from xgate.pseudonym import Pseudonymiser, load_key


def drawn(pseudonym: str, fraction: float, seed: int) -> bool:
    """Whether a subject falls in the holdout: SHA-256(seed, pseudonym) as a number in [0, 1)."""
    digest = hashlib.sha256(f"xgate-split-{seed}:{pseudonym}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def write_holdout(
    config: Path,
    data: Path,
    id_column: str,
    out: Path,
    *,
    fraction: float,
    seed: int,
    column: str | None = None,
    value: str | None = None,
) -> tuple[int, int]:
    """(reserved, total) subjects; refuses the whole file if any id is invalid or repeated."""
    if column is None and not 0.0 < fraction < 1.0:  # NaN too: typer's range check lets it through
        raise InvalidInput(f"--fraction must be a share between 0 and 1, not {fraction}")
    cfg = load_node_config(config)
    pseudonymiser = Pseudonymiser(load_key(cfg.node.pseudonym_key_file))
    if not data.exists():
        raise InvalidInput(f"data file {data} does not exist")
    if data.is_dir():
        raise InvalidInput(f"data file {data} is a directory")
    if out.is_dir():
        raise InvalidInput(f"--out {out} is a directory: name the holdout file to write")
    reserved: list[str] = []
    seen: set[str] = set()
    errors: list[str] = []
    total = 0
    for rownum, record in _rows(data):
        if total == 0:
            absent = [c for c in (id_column, column) if c is not None and c not in record]
            if absent:
                raise InvalidInput(f"{data}: missing column(s) {', '.join(absent)}")
        total += 1
        try:
            pseudonym = pseudonymiser.pseudonym(record[id_column])
        except InvalidInput as exc:
            errors.append(f"row {rownum}: {id_column}: {exc.message}")
            continue
        if pseudonym in seen:
            errors.append(f"row {rownum}: duplicate subject")
            continue
        seen.add(pseudonym)
        chosen = (
            cell_key(record[column]) == cell_key(value or "")
            if column is not None
            else drawn(pseudonym, fraction, seed)
        )
        if chosen:
            reserved.append(pseudonym)
    if errors:
        shown = "; ".join(errors[:MAX_REPORTED_ERRORS])
        raise InvalidInput(f"{data}: {len(errors)} invalid row(s) of {total}, no holdout written: {shown}")
    if total == 0:
        raise InvalidInput(f"{data}: no data rows")
    if not reserved or len(reserved) == total:
        raise InvalidInput(f"{data}: the holdout would hold {len(reserved)} of {total} subjects; adjust the split")
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)  # a killed split's: created afresh below, so with the mode below
        # Owner-only, whatever the umask: which subjects a node reserves is about people.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            f.write("".join(f"{p}\n" for p in sorted(reserved)))
        tmp.replace(out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # no half-written holdout left beside the target
        raise InvalidInput(f"--out {out}: cannot write the holdout ({exc.strerror or exc})") from None
    return len(reserved), total


def _rows(data: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """`read_rows`, with an unreadable or undecodable file refused by name instead of a traceback."""
    try:
        yield from read_rows(data)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{data}: not UTF-8 text ({exc.reason}); save the extract as UTF-8") from None
    except (OSError, ValueError, csv.Error) as exc:  # pyarrow's errors are OSError/ValueError subclasses
        raise InvalidInput(f"{data}: cannot be read as CSV or Parquet ({exc})") from None
