"""Federation pseudonyms: HMAC-SHA256(federation key, normalised national id), truncated.

Agencies and requester clients hold the federation pseudonym key; the gateway never does, so
it cannot link a pseudonym back to a person by hashing candidate ids.

HMAC runs on the standard library's OpenSSL-backed `hmac`/`hashlib` from a precomputed keyed
state: measured 1.5 µs per id against 27 µs for pycryptodome's HMAC object (which dominated
loading 100k-row extracts). The output is identical; a test checks it against pycryptodome.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import re
import unicodedata
from pathlib import Path

from xgate.errors import ConfigError, InvalidInput

PSEUDONYM_KEY_BYTES = 32
PSEUDONYM_CHARS = 26  # base32 of 128 bits, no padding
PSEUDONYM_RE = re.compile(r"^[a-z2-7]{26}$")
_ID_RE = re.compile(r"^[0-9]{17}[0-9X]$")
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def id_checksum(first17: str) -> str:
    """GB 11643-1999 check character of an 18-character resident identity number."""
    return _CHECK[sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True)) % 11]


_NOT_ALNUM = re.compile(r"[^0-9A-Z]")
_ID_RUN = re.compile(r"[0-9X]{18,}")


def contains_national_id(text: str) -> bool:
    """Whether `text` holds an 18-character resident identity number anywhere, separators ignored.

    Everything but ASCII letters and digits is dropped (after NFKC, so full-width digits count), and
    every 18-character window of a run of digits/X is tested: 17 digits, the GB 11643 check
    character, and a calendar date as the birth date (characters 7-14; the date keeps long digit
    runs such as timestamps from being taken for ids one time in eleven). So `C110101197302232165`,
    `110101-19730223-2165` and `1101 0119 7302 2321 65` all hold one.
    """
    compact = _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", text).upper())
    for run in _ID_RUN.findall(compact):
        for i in range(len(run) - 17):
            window = run[i : i + 18]
            if "X" not in window[:17] and id_checksum(window[:17]) == window[17] and _is_date(window[6:14]):
                return True
    return False


def _is_date(yyyymmdd: str) -> bool:
    try:
        born = datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:]))
    except ValueError:
        return False
    return 1850 <= born.year <= 2100


def normalise_national_id(raw: str) -> str:
    """Strip spaces, upper-case the check character, and validate format and checksum."""
    value = raw.replace(" ", "").replace("-", "").strip().upper()
    if not _ID_RE.match(value):
        raise InvalidInput("national id must be 17 digits followed by a digit or X")
    if id_checksum(value[:17]) != value[17]:
        raise InvalidInput("national id check character does not match (GB 11643)")
    return value


class Pseudonymiser:
    def __init__(self, key: bytes) -> None:
        if len(key) != PSEUDONYM_KEY_BYTES:
            raise ConfigError(f"pseudonym key must be {PSEUDONYM_KEY_BYTES} bytes")
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def pseudonym(self, national_id: str) -> str:
        normalised = normalise_national_id(national_id)
        mac = self._keyed.copy()
        mac.update(normalised.encode("ascii"))
        digest = mac.digest()[:16]
        return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def validate_pseudonym(value: str) -> str:
    if not PSEUDONYM_RE.match(value):
        raise InvalidInput("pseudonym must be 26 lower-case base32 characters")
    return value


def load_key(path: Path | None = None, env: str = "XGATE_PSEUDONYM_KEY") -> bytes:
    """Key from a file (raw 32 bytes or 64 hex chars) or, without a path, from an env var (hex)."""
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"pseudonym key file {path}: {exc.strerror}") from exc
        text = data.strip()
        key = bytes.fromhex(text.decode()) if len(text) == 2 * PSEUDONYM_KEY_BYTES else data
    else:
        hex_key = os.environ.get(env)
        if not hex_key:
            raise ConfigError(f"no pseudonym key: pass a key file or set {env}")
        key = bytes.fromhex(hex_key)
    if len(key) != PSEUDONYM_KEY_BYTES:
        raise ConfigError(f"pseudonym key must be {PSEUDONYM_KEY_BYTES} bytes")
    return key


def write_key(path: Path, key: bytes | None = None) -> bytes:
    key = key or os.urandom(PSEUDONYM_KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key.hex())
    return key
