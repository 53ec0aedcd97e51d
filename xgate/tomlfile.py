"""Load TOML files into pydantic models with errors that name the file, line and field."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from xgate.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
_TABLE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def locate(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort 1-based line of a pydantic error location such as ('criteria', 1, 'threshold')."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    i = 0
    while i < len(loc):
        part = loc[i]
        nxt = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(part, str) and isinstance(nxt, int):
            # An array of tables [[part]]: find its nxt-th header.
            headers = [n for n in range(start, end) if (m := _TABLE.match(lines[n])) and m.group(1) == part]
            if nxt < len(headers):
                start = headers[nxt]
                following = [n for n in range(start + 1, end) if _TABLE.match(lines[n])]
                end = following[0] if following else end
                i += 2
                continue
            # Maybe an inline array `part = [...]`: fall back to the key line.
        if isinstance(part, str):
            for n in range(start, end):
                m = _TABLE.match(lines[n])
                if m and m.group(1).split(".")[-1] == part:
                    start = n
                    break
                k = _KEY.match(lines[n])
                if k and k.group(1) == part:
                    return n + 1
        i += 1
    return start + 1 if start < len(lines) else None


def load_model(path: Path, model: type[M], what: str) -> tuple[M, bytes]:
    """Parse and validate; returns the model and the raw bytes (for hashing)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read ({exc.strerror})") from exc
    text = raw.decode("utf-8-sig", errors="replace")  # a BOM (Windows Notepad) is not a TOML statement
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: TOML syntax error: {exc}") from exc
    try:
        return model.model_validate(data), raw
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = locate(text, loc)
        where = f"line {line}, " if line else ""
        raise ConfigError(
            f"{what} {path}: {where}field '{field}': {first['msg']}",
            file=str(path),
            line=line,
            field=field,
        ) from exc


def resolve_relative(section: BaseModel | None, fields: tuple[str, ...], base: Path) -> None:
    """Make the named path fields of a config section absolute, relative to the config file's folder."""
    if section is None:
        return
    for name in fields:
        value = getattr(section, name)
        if value is not None and not value.is_absolute():
            setattr(section, name, (base / value).resolve())
