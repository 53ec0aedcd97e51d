"""An agency node's own data store (SQLite, embedded default).

Values are integers keyed by (data element, pseudonym); national ids are not stored, only the
federation pseudonym computed at load time. Core-class columns can be sealed at rest with a
column cipher (AES-256-GCM, see crypto/at_rest.py), whose key never lives beside the store.

Loads go through `store_for_load`: one load at a time per store, and a store that does not exist
yet is built beside its path and renamed into place only once its load committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from crypto.value_tags import TAG_KEY_BYTES, new_tag_key
from policies.catalogue import DataElement
from xgate.errors import ConfigError, CryptoError, IntegrityError, InvalidInput, NotFound, StoreUnavailable, XgateError

if TYPE_CHECKING:
    from nodes.config import NodeSettings

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
CREATE TABLE IF NOT EXISTS store_secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
# Keys the value tags this node answers with (crypto/value_tags.py). Kept with the data, not the
# process: it must outlive restarts and reloads (a new key would mask everyone afresh) and be
# shared by node processes serving one store; the gateway never reads a store.
_VALUE_TAG_KEY = "value_tag_key"

BUSY_TIMEOUT_S = 5.0  # how long a write waits for another writer before "store busy"
_LOADING = ".loading"  # a first load's database, renamed to the store once committed
_LOAD_LOCK = ".load-lock"  # flock held by the one load writing the store
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _store_error(path: Path, exc: sqlite3.Error) -> XgateError:
    """A clear xgate error for a SQLite failure on the store at `path` (never a sqlite3 traceback)."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreUnavailable(f"node store {path}: store busy: another process is writing it; retry")
    if name == "SQLITE_NOTADB":
        return ConfigError(f"node store {path} is not a SQLite database (not an xgate node store)")
    if name.startswith("SQLITE_READONLY"):
        return ConfigError(f"node store {path}: cannot write it ({exc}); check its permissions")
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM")):
        return ConfigError(f"node store {path}: cannot open it ({exc}); check its path and permissions")
    return ConfigError(f"node store {path}: {exc}")


class ColumnSealer(Protocol):
    """What the store needs from an at-rest cipher (crypto.at_rest.ColumnCipher satisfies it)."""

    def encrypt_int(self, value: int, aad: bytes) -> bytes: ...

    def decrypt_int(self, blob: bytes, aad: bytes) -> int: ...


def _aad(element: str, pseudonym: str) -> bytes:
    return f"{element}\x00{pseudonym}".encode()


@dataclass(frozen=True)
class StoredElement:
    element: DataElement
    dataset: str
    records: int  # -1 where not counted
    sealed: bool


def _element(r: Sequence[Any]) -> DataElement:
    """An element from its stored row. The store keeps category codes, not labels (the catalogue
    has them): a category element's labels are its codes here."""
    categories = tuple(str(i) for i in range(int(r[4]), int(r[5]) + 1)) if r[2] == "category" else ()
    return DataElement(
        id=r[0], agency=r[1], type=r[2], unit=r[3], min=r[4], max=r[5], classification=r[6], description=r[7],
        categories=categories,
    )  # fmt: skip


class NodeStore:
    def __init__(self, conn: sqlite3.Connection, path: Path, sealer: ColumnSealer | None) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self._sealer = sealer

    @classmethod
    def open(cls, path: Path, read_only: bool = False, sealer: ColumnSealer | None = None) -> NodeStore:
        """Open (writable: create) the store; a path SQLite cannot use raises ConfigError naming it."""
        if path.is_dir():
            raise ConfigError(f"node store {path} is a directory, not a store file")
        if not read_only:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"node store {path}: cannot create its directory ({exc.strerror})") from None
            _create_private(path)
        try:
            if read_only:
                conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=BUSY_TIMEOUT_S
                )
            else:
                conn = sqlite3.connect(path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise _store_error(path, exc) from None
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not tables & {"elements", "element_values", "datasets"}:  # e.g. an audit log: left alone
                conn.close()
                shown = ", ".join(sorted(tables)[:4])
                raise ConfigError(f"node store {path} is another database (tables {shown}), not an xgate node store")
            if not read_only:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
                with conn:
                    conn.execute(
                        "INSERT OR IGNORE INTO store_secrets (name, value) VALUES (?, ?)",
                        (_VALUE_TAG_KEY, new_tag_key()),
                    )
            # SQLite reads a file only when first asked: ask now, so a foreign file fails here.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise _store_error(path, exc) from None
        return cls(conn, path, sealer)

    def value_tag_key(self) -> bytes:
        """This store's value-tag key (made when the store was first opened for writing)."""
        try:
            with self._lock:
                row = self._conn.execute("SELECT value FROM store_secrets WHERE name = ?", (_VALUE_TAG_KEY,)).fetchone()
        except sqlite3.OperationalError:
            row = None  # a store written before value tags, opened read-only
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from None
        if row is None or len(row[0]) != TAG_KEY_BYTES:
            raise ConfigError(
                f"node store {self.path} has no value-tag key: start the node on it once (it opens the store "
                "for writing and adds one)"
            )
        return bytes(row[0])

    def close(self) -> None:
        self._conn.close()

    # -- reading -----------------------------------------------------------------------------

    def element_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT id FROM elements ORDER BY id")]

    def elements(self) -> list[StoredElement]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT e.id, e.agency, e.type, e.unit, e.min, e.max, e.classification, e.description,"
                " e.dataset, e.sealed, (SELECT COUNT(*) FROM element_values v WHERE v.element = e.id)"
                " FROM elements e ORDER BY e.id"
            ).fetchall()
        return [
            StoredElement(
                _element(r),
                dataset=r[8],
                records=r[10],
                sealed=bool(r[9]),
            )
            for r in rows
        ]

    def element(self, element_id: str) -> StoredElement:
        """One element's metadata (``records`` is not counted here: this runs on every lookup)."""
        with self._lock:
            r = self._conn.execute(
                "SELECT id, agency, type, unit, min, max, classification, description, dataset, sealed"
                " FROM elements WHERE id = ?",
                (element_id,),
            ).fetchone()
        if r is None:
            raise NotFound(f"this node offers no data element '{element_id}'")
        return StoredElement(_element(r), dataset=r[8], records=-1, sealed=bool(r[9]))

    def subject_count(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(DISTINCT pseudonym) FROM element_values").fetchone()
        return int(row[0])

    def known(self, pseudonyms: Sequence[str]) -> int:
        """How many of the given pseudonyms this store holds any value for."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(DISTINCT pseudonym) FROM element_values"
                " WHERE pseudonym IN (SELECT value FROM json_each(?))",
                (json.dumps(list(pseudonyms)),),
            ).fetchone()
        return int(row[0])

    def pseudonyms(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT DISTINCT pseudonym FROM element_values ORDER BY 1")]

    def _decode(self, element: str, pseudonym: str, raw: object, sealed: bool) -> int:
        if sealed:
            if self._sealer is None:
                raise InvalidInput(f"element '{element}' is sealed at rest and no column key is configured")
            assert isinstance(raw, bytes)
            try:
                return self._sealer.decrypt_int(raw, _aad(element, pseudonym))
            except CryptoError as exc:  # the node's own data is damaged: not the request's fault
                raise IntegrityError(f"a stored value of '{element}' does not open: {exc.message}") from None
        assert isinstance(raw, int)
        return raw

    def lookup(self, element_id: str, pseudonyms: Sequence[str]) -> dict[str, int]:
        """Values present for the given pseudonyms (absent subjects are simply missing)."""
        stored = self.element(element_id)
        with self._lock:
            rows = self._conn.execute(
                "SELECT pseudonym, value FROM element_values"
                " WHERE element = ? AND pseudonym IN (SELECT value FROM json_each(?))",
                (element_id, json.dumps(list(pseudonyms))),
            ).fetchall()
        return {p: self._decode(element_id, p, v, stored.sealed) for p, v in rows}

    def values_for(self, element_id: str, pseudonyms: Sequence[str], if_missing: int) -> np.ndarray:
        """int64 values in request order, `if_missing` for subjects without a record."""
        found = self.lookup(element_id, pseudonyms)
        return np.fromiter((found.get(p, if_missing) for p in pseudonyms), dtype=np.int64, count=len(pseudonyms))

    def matrix(self, elements: Sequence[str], pseudonyms: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """Rows = subjects (all known ones, or the given ones), cols = elements; NaN where missing."""
        subjects = list(pseudonyms) if pseudonyms is not None else self.pseudonyms()
        index = {p: i for i, p in enumerate(subjects)}
        out = np.full((len(subjects), len(elements)), np.nan)
        for j, element_id in enumerate(elements):
            for p, v in self.lookup(element_id, subjects).items():
                out[index[p], j] = v
        return subjects, out

    # -- writing -----------------------------------------------------------------------------

    def replace_dataset(
        self,
        dataset: str,
        source_sha256: str,
        elements: Sequence[tuple[DataElement, bool]],
        rows: Iterable[tuple[str, str, int]],
        loaded_at: str,
    ) -> int:
        """Atomically replace the dataset: every value of its earlier elements and of `elements` goes,
        then `rows` are stored as (element, pseudonym, value)."""
        sealed = {e.id for e, seal in elements if seal}
        if sealed and self._sealer is None:
            raise InvalidInput("core-class elements must be sealed but no column key is configured")

        def encoded() -> Iterable[tuple[str, str, object]]:
            for element, pseudonym, value in rows:
                if element in sealed:
                    assert self._sealer is not None
                    yield element, pseudonym, self._sealer.encrypt_int(value, _aad(element, pseudonym))
                else:
                    yield element, pseudonym, value

        try:
            with self._lock, self._conn:
                return self._replace(dataset, source_sha256, elements, encoded(), loaded_at)
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from None

    def _replace(
        self,
        dataset: str,
        source_sha256: str,
        elements: Sequence[tuple[DataElement, bool]],
        rows: Iterable[tuple[str, str, object]],
        loaded_at: str,
    ) -> int:
        # Columns the new mapping dropped lose their values too: stale subjects would still count.
        self._conn.execute(
            "DELETE FROM element_values WHERE element IN (SELECT id FROM elements WHERE dataset = ?)", (dataset,)
        )
        self._conn.executemany("DELETE FROM element_values WHERE element = ?", [(e.id,) for e, _ in elements])
        self._conn.execute("DELETE FROM elements WHERE dataset = ?", (dataset,))
        self._conn.executemany(
            "INSERT OR REPLACE INTO elements VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (e.id, e.agency, e.type.value, e.unit, e.min, e.max, e.classification.value, e.description,
                 dataset, int(seal))
                for e, seal in elements
            ],
        )  # fmt: skip
        count = self._conn.executemany("INSERT INTO element_values VALUES (?,?,?)", rows).rowcount
        self._conn.execute(
            "INSERT OR REPLACE INTO datasets VALUES (?,?,?,?)", (dataset, source_sha256, count, loaded_at)
        )
        return count

    def sealed_rows(self) -> list[tuple[str, str, bytes]]:
        with self._lock:
            return self._conn.execute(
                "SELECT v.element, v.pseudonym, v.value FROM element_values v"
                " JOIN elements e ON e.id = v.element WHERE e.sealed = 1"
            ).fetchall()

    def rewrite_sealed(self, rows: Iterable[tuple[str, str, bytes]]) -> None:
        """Replace sealed blobs in one transaction (used by column-key rotation)."""
        with self._lock, self._conn:
            self._conn.executemany(
                "UPDATE element_values SET value = ? WHERE element = ? AND pseudonym = ?",
                [(blob, element, pseudonym) for element, pseudonym, blob in rows],
            )


def _column_sealer(settings: NodeSettings) -> ColumnSealer | None:
    if settings.column_key_file is None:
        return None
    from crypto.at_rest import load_key

    # Refuses a key file inside the store's directory: the key never sits beside the data.
    return load_key(settings.column_key_file, data_dir=settings.store.parent)


def _create_private(path: Path) -> None:
    """Create a missing store file 0600 before SQLite opens it: the store holds personal data, and
    SQLite gives its -wal/-shm/-journal files the store's mode (an existing file keeps its own mode:
    `xgate config check` refuses one group/others can read)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"node store {path}: cannot create it ({exc.strerror})") from None


def open_node_store(settings: NodeSettings, read_only: bool = False) -> NodeStore:
    """Open a node's store with its at-rest column cipher when a column key is configured."""
    return NodeStore.open(settings.store, read_only=read_only, sealer=_column_sealer(settings))


def _take_load_lock(path: Path) -> int:
    """flock `<store>.load-lock` without waiting; returns its fd. The holder unlinks the file as it
    releases it, so a load that locked a file no longer at that path takes the new one instead."""
    lock_path = _sibling(path, _LOAD_LOCK)
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"node store {path}: cannot write in {path.parent} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreUnavailable(f"node store {path}: store busy: another load is writing it; retry") from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"node store {path}: cannot lock {lock_path} ({exc.strerror})") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _release_load_lock(path: Path, fd: int) -> None:
    with contextlib.suppress(OSError):  # a lock file left behind is harmless: the next load takes it
        _sibling(path, _LOAD_LOCK).unlink(missing_ok=True)  # still held, so still ours
    os.close(fd)


def _remove_side_files(path: Path) -> None:
    for suffix in _SQLITE_SIDE_FILES:
        _sibling(path, suffix).unlink(missing_ok=True)


def _remove_database(path: Path) -> None:
    path.unlink(missing_ok=True)
    _remove_side_files(path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def store_for_load(path: Path, sealer: ColumnSealer | None = None) -> Iterator[NodeStore]:
    """The store one load writes, while no other load can (StoreUnavailable "store busy" otherwise).

    An existing store is opened as it is: each `replace_dataset` is one transaction. A store that does
    not exist yet is built as `<store>.loading` and renamed into place only when the body returns, so
    a load that fails or is killed leaves no store; the next load removes what a killed one left.
    """
    if path.is_dir():
        raise ConfigError(f"node store {path} is a directory, not a store file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"node store {path}: cannot create its directory ({exc.strerror})") from None
    lock = _take_load_lock(path)
    try:
        temp = _sibling(path, _LOADING)
        _disk(path, _remove_database, temp)  # a killed load's: we hold the lock, so no live load's
        if path.exists():
            store = NodeStore.open(path, sealer=sealer)
            try:
                yield store
            finally:
                store.close()
            return
        store = NodeStore.open(temp, sealer=sealer)
        store.path = path  # errors name the store the operator configured
        try:
            yield store
            # Fold the WAL into the file: it must be whole on its own before it is renamed.
            try:
                busy = store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                raise _store_error(path, exc) from None
            if busy:
                raise StoreUnavailable(f"node store {path}: store busy: {temp} is open elsewhere; retry")
            store.close()
            # Journals of a store deleted without them would be replayed into this one.
            _disk(path, _remove_side_files, path)
            _disk(path, os.replace, temp, path)
        except BaseException:
            store.close()
            with contextlib.suppress(OSError):  # the load's own error is the one to report
                _remove_database(temp)
            raise
        _disk(path, _remove_database, temp)  # the emptied -wal/-shm beside the old name
        _disk(path, _fsync_dir, path.parent)
    finally:
        _release_load_lock(path, lock)


def _disk(path: Path, action: Callable[..., None], *args: Path) -> None:
    try:
        action(*args)
    except OSError as exc:
        raise ConfigError(f"node store {path}: cannot write it ({exc.strerror})") from None


def node_store_for_load(settings: NodeSettings) -> AbstractContextManager[NodeStore]:
    """`store_for_load` for a node's configured store, with its column cipher."""
    return store_for_load(settings.store, _column_sealer(settings))
