"""Subjects files: a CSV with a `national_id` column, as `xgate check --subjects` reads it.

Errors name the file and the line, never the content of a line: a subjects file holds national
ids, and an error message ends up on terminals and in logs.
"""

from __future__ import annotations

import csv
from pathlib import Path

from xgate.errors import InvalidInput
from xgate.pseudonym import normalise_national_id

COLUMN = "national_id"


def read_subjects(path: Path) -> list[str]:
    """The national ids of a subjects file, in file order, each checked (format and check character)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InvalidInput(f"subjects file {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"subjects file {path} is not UTF-8 text (save it as UTF-8 CSV)") from None
    try:
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or COLUMN not in [f.strip() for f in reader.fieldnames]:
            raise InvalidInput(f"subjects file {path} has no '{COLUMN}' column: its first line must name the columns")
        column = next(f for f in reader.fieldnames if f.strip() == COLUMN)
        ids = []
        for row in reader:
            line = reader.line_num
            value = (row.get(column) or "").strip()
            if not value:
                raise InvalidInput(f"subjects file {path}, line {line}: '{COLUMN}' is empty")
            try:
                ids.append(normalise_national_id(value))
            except InvalidInput as exc:
                raise InvalidInput(f"subjects file {path}, line {line}: {exc.message}") from None
    except csv.Error as exc:
        raise InvalidInput(f"subjects file {path} is not a readable CSV ({type(exc).__name__})") from None
    if not ids:
        raise InvalidInput(f"subjects file {path} lists no subjects")
    return ids
