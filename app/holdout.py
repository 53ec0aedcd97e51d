"""`xgate train split`: a reproducible evaluation holdout, written as pseudonyms at the node.

The node reads its own extract, pseudonymises each national id with its own key (the federation
pseudonym key, as `xgate node load` does) and writes the pseudonyms of the reserved subjects, one
a line, sorted: national ids never appear in the file. The draw is a keyed function of the
pseudonym and the seed, so every node holding the same subjects reserves the same ones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nodes.config import load_node_config
from nodes.loader import MAX_REPORTED_ERRORS, read_rows
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
    cfg = load_node_config(config)
    pseudonymiser = Pseudonymiser(load_key(cfg.node.pseudonym_key_file))
    if not data.exists():
        raise InvalidInput(f"data file {data} does not exist")
    reserved: list[str] = []
    seen: set[str] = set()
    errors: list[str] = []
    total = 0
    for rownum, record in read_rows(data):
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
        chosen = record[column].strip() == value if column is not None else drawn(pseudonym, fraction, seed)
        if chosen:
            reserved.append(pseudonym)
    if errors:
        shown = "; ".join(errors[:MAX_REPORTED_ERRORS])
        raise InvalidInput(f"{data}: {len(errors)} invalid row(s) of {total}, no holdout written: {shown}")
    if total == 0:
        raise InvalidInput(f"{data}: no data rows")
    if not reserved or len(reserved) == total:
        raise InvalidInput(f"{data}: the holdout would hold {len(reserved)} of {total} subjects; adjust the split")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(f"{p}\n" for p in sorted(reserved)), encoding="utf-8")
    tmp.replace(out)
    return len(reserved), total
