"""Subjects files: a CSV with a `national_id` column, as `xgate check --subjects` reads it."""

from __future__ import annotations

import csv
from pathlib import Path


def read_subjects(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [row["national_id"] for row in csv.DictReader(handle)]
