"""One verifiable audit log for a federation of gateway replicas: one Merkle log per replica, as one.

Each gateway replica appends to its own log (its own SQLite file, its own origin
`xgate.gateway.<replica>/audit` and its own signing key) and has its checkpoints cosigned by the
nodes, exactly as a single gateway does; the appends stay local, so replicas never wait for one
another to record an action. What makes the logs one is the **federation manifest**
(`xgate-audit-federation/1`), kept in the replicas' shared database: every log that ever
registered (origin, replica, public key) and the latest checkpoint each published, with its
cosignatures. The officer verifies the federation with `verify_federation`:

* every log given verifies on its own (`audit.verify.verify_log`: every entry, node and checkpoint);
* its origin is in the manifest and its key is the one the manifest and the officer agree on;
* every log in the manifest is given: a replica's whole log cannot be left out unnoticed;
* each log contains the manifest's latest checkpoint for it, root for root: a log cut back
  together with its own newer checkpoints is caught by the copy the other replicas hold.

`merged_entries` then reads the verified prefixes of all logs as one sequence, merge-sorted by
time (ties by origin and index), each entry naming the log and index that prove it.
"""

from __future__ import annotations

import base64
import heapq
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.checkpoints import CosignatureVerifier, EccKey, raw_public
from audit.db import connect
from audit.verify import LogReport, verify_log
from xgate.errors import IntegrityError, InvalidInput

FORMAT = "xgate-audit-federation/1"


@dataclass(frozen=True)
class ManifestLog:
    origin: str
    replica: str
    public_key: bytes  # raw Ed25519 public key (32 bytes)
    checkpoint: str | None = None  # the latest signed checkpoint note it published (with cosignatures)

    def view(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "replica": self.replica,
            "public_key_b64": base64.b64encode(self.public_key).decode(),
            "checkpoint": self.checkpoint,
        }


def manifest_document(logs: Sequence[ManifestLog]) -> dict[str, Any]:
    return {"format": FORMAT, "logs": [entry.view() for entry in sorted(logs, key=lambda e: e.origin)]}


def parse_manifest(text: str | bytes) -> list[ManifestLog]:
    """A manifest document (what `GET /v1/audit/federation` answers); InvalidInput names what is wrong."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("federation manifest is not JSON") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InvalidInput(f"federation manifest must have format {FORMAT!r}")
    logs = raw.get("logs")
    if not isinstance(logs, list) or not logs:
        raise InvalidInput("federation manifest lists no logs")
    out: list[ManifestLog] = []
    for n, item in enumerate(logs):
        if not isinstance(item, dict):
            raise InvalidInput(f"federation manifest log #{n} is not an object")
        origin, replica, key_b64 = item.get("origin"), item.get("replica"), item.get("public_key_b64")
        checkpoint = item.get("checkpoint")
        if not isinstance(origin, str) or not origin or not isinstance(replica, str) or not isinstance(key_b64, str):
            raise InvalidInput(f"federation manifest log #{n} needs origin, replica and public_key_b64")
        if checkpoint is not None and not isinstance(checkpoint, str):
            raise InvalidInput(f"federation manifest log #{n}: checkpoint must be a signed note or null")
        try:
            key = base64.b64decode(key_b64, validate=True)
        except ValueError as exc:
            raise InvalidInput(f"federation manifest log #{n}: public_key_b64 is not base64") from exc
        if len(key) != 32:
            raise InvalidInput(f"federation manifest log #{n}: public key must be 32 bytes (Ed25519)")
        out.append(ManifestLog(origin, replica, key, checkpoint))
    origins = [e.origin for e in out]
    if len(set(origins)) != len(origins):
        raise InvalidInput("federation manifest lists a log twice")
    return out


@dataclass(frozen=True)
class FederationReport:
    logs: tuple[LogReport, ...]  # one per log, in manifest order
    paths: tuple[Path, ...]  # the database each was read from, same order

    def sizes(self) -> dict[Path, int]:
        """How much of each log was verified: what `merged_entries` should read."""
        return {path: r.size for path, r in zip(self.paths, self.logs, strict=True)}

    @property
    def entries(self) -> int:
        return sum(r.size for r in self.logs)


def verify_federation(
    manifest: Sequence[ManifestLog],
    logs: Sequence[tuple[Path, EccKey]],
    *,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int | None = None,
) -> FederationReport:
    """Verify every replica's log and that together they are the whole federation's log.

    ``logs``: (audit database, the log public key the officer holds for it). Raises IntegrityError
    naming the log and what is wrong.
    """
    by_origin = {e.origin: e for e in manifest}
    reports: dict[str, LogReport] = {}
    paths: dict[str, Path] = {}
    for path, key in logs:
        origin = log_origin(path)
        entry = by_origin.get(origin)
        if entry is None:
            raise IntegrityError(f"log '{origin}' ({path.name}) is not in the federation manifest", origin=origin)
        if origin in reports:
            raise InvalidInput(f"log '{origin}' is given twice")
        if raw_public(key) != entry.public_key:
            raise IntegrityError(
                f"log '{origin}': the manifest names another public key than the one given", origin=origin
            )
        named = [entry.checkpoint] if entry.checkpoint else []
        try:
            reports[origin] = verify_log(path, key, witnesses=witnesses, quorum=quorum, named=named)
            paths[origin] = path
        except IntegrityError as exc:
            raise IntegrityError(f"log '{origin}': {exc.message}", **{**exc.details, "origin": origin}) from exc
    missing = sorted(set(by_origin) - set(reports))
    if missing:
        raise IntegrityError(
            f"the federation manifest lists {len(missing)} log(s) that were not verified: {', '.join(missing)}",
            missing=missing,
        )
    return FederationReport(tuple(reports[e.origin] for e in manifest), tuple(paths[e.origin] for e in manifest))


def log_origin(path: Path) -> str:
    if not path.exists():
        raise InvalidInput(f"audit database '{path.name}' does not exist")
    conn = connect(path, readonly=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(f"audit database '{path.name}' is unreadable") from exc
    finally:
        conn.close()
    if row is None:
        raise IntegrityError(f"audit database '{path.name}' has no origin")
    return str(row[0])


@dataclass(frozen=True)
class FederatedEntry:
    time_ms: int
    origin: str
    index: int
    data: bytes

    def view(self) -> dict[str, Any]:
        return {"origin": self.origin, "index": self.index, "record": json.loads(self.data)}


def merged_entries(logs: Mapping[Path, int]) -> Iterator[FederatedEntry]:
    """The first ``size`` entries of each log (what was verified), merge-sorted by (time, origin, index)."""

    def one(path: Path, size: int) -> Iterator[FederatedEntry]:
        origin = log_origin(path)
        conn = connect(path, readonly=True)
        try:
            sql = "SELECT time_ms, idx, data FROM entries WHERE idx < ? ORDER BY time_ms, idx"
            for time_ms, idx, data in conn.execute(sql, (size,)):
                yield FederatedEntry(int(time_ms), origin, int(idx), bytes(data))
        finally:
            conn.close()

    streams = [one(path, size) for path, size in logs.items()]
    yield from heapq.merge(*streams, key=lambda e: (e.time_ms, e.origin, e.index))
