"""The one read API over an audit log, for the officer REST API, the console and the CLI.

Two modes:

* ``strict`` (evidence): every entry returned has been re-hashed and re-parsed; one altered entry
  in the answer makes the whole read fail with IntegrityError (409), naming its index.
* ``tolerant`` (an officer's view when something is wrong): every stored row is returned, each
  marked intact or altered with the reason, shown as stored. The verdicts that matter still come
  from audit.merkle / audit.verify: an altered entry never verifies.

Filters become SQL in one place (audit.store.filter_clause, shared with AuditLog.entries), so
lookups by subject and request id are lag-safe in both modes: the lookup index below its mark
plus a scan of the entries above it (audit/index.py).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from audit import merkle
from audit.alerts import AlertConfig, evaluate
from audit.checkpoints import CosignatureVerifier, NoteVerifier, SignedCheckpoint, add_cosignature, parse_signed_note
from audit.query import Filters
from audit.records import AuditRecord
from audit.store import MAX_PAGE, AuditLog, check_page, connect, filter_clause
from xgate.errors import IntegrityError, InvalidInput, NotFound, XgateError

Mode = Literal["strict", "tolerant"]
COUNT_CAP = 100_000  # counting beyond this is not worth a full index scan per page
REASON_KEYS = ("reasons", "message", "reason", "error_message", "error", "error_code")


@dataclass(frozen=True)
class RawEntry:
    """One stored row, trusted for nothing until checked."""

    index: int
    leaf_hash: bytes
    data: bytes

    def problem(self) -> str | None:
        """Why this stored entry cannot be trusted, or None when it is intact."""
        if merkle.leaf_hash(self.data) != self.leaf_hash:
            return "entry data does not match its stored leaf hash (altered)"
        if not _parses(self.data):
            return "entry data is not a valid canonical record"
        return None

    def readable(self) -> dict[str, Any] | None:
        """The record as stored (even when altered, so the officer sees what changed)."""
        try:
            value = json.loads(self.data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def view(self, *, with_data: bool = False) -> dict[str, Any]:
        problem = self.problem()
        record = self.readable()
        out: dict[str, Any] = {
            "index": self.index,
            "leaf_hash": self.leaf_hash.hex(),
            "intact": problem is None,
            "problem": problem,
            "record": record,
            "reason": reason_of(record.get("metadata") or {}) if record else None,
        }
        if with_data:
            out["data_b64"] = base64.b64encode(self.data).decode()
        return out


@dataclass(frozen=True)
class Page:
    tree_size: int
    total: int  # matching entries, counted up to COUNT_CAP
    entries: list[RawEntry]


class AuditReader:
    """Reads of one AuditLog; ``verifier`` and ``witnesses`` check checkpoint signatures when given."""

    def __init__(
        self,
        log: AuditLog,
        verifier: NoteVerifier | None = None,
        witnesses: Sequence[CosignatureVerifier] = (),
        request_id: str | None = None,
    ) -> None:
        self.log = log
        self.verifier = verifier
        self.witnesses = {w.name: w for w in witnesses}
        self.request_id = request_id  # the request being served: recorded reads carry it

    # -- entries -------------------------------------------------------------------------------

    def page(
        self,
        filters: Filters,
        *,
        text: str | None = None,
        offset: int = 0,
        limit: int = 100,
        newest_first: bool = False,
        mode: Mode = "strict",
    ) -> Page:
        """One page of the entries matching every filter (and containing ``text``), with the count."""
        check_page(offset, limit)
        size = self.log.size
        clause, args = filter_clause(size, {**asdict(filters), "text": text})
        order = "DESC" if newest_first else "ASC"
        conn = self.log.read_connection()
        sql = f"SELECT idx, leaf_hash, data FROM entries WHERE {clause} ORDER BY idx {order} LIMIT ? OFFSET ?"  # noqa: S608 (fixed column names)
        rows = [RawEntry(int(r[0]), bytes(r[1]), bytes(r[2])) for r in conn.execute(sql, (*args, limit, offset))]
        count_sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM entries WHERE {clause} LIMIT ?)"  # noqa: S608
        total = int(conn.execute(count_sql, (*args, COUNT_CAP)).fetchone()[0])
        if mode == "strict":
            _refuse_altered(rows)
        return Page(size, total, rows)

    def raw_entry(self, index: int) -> RawEntry:
        sql = "SELECT idx, leaf_hash, data FROM entries WHERE idx=? AND idx<?"
        row = self.log.read_connection().execute(sql, (index, self.log.size)).fetchone()
        if row is None:
            raise NotFound("no audit entry at that index", index=index)
        return RawEntry(int(row[0]), bytes(row[1]), bytes(row[2]))

    def entry(self, index: int, *, mode: Mode = "strict") -> dict[str, Any]:
        """An entry with its raw data, the latest checkpoint, an inclusion proof and the server's verdict.

        The proof comes from the stored tree nodes (never from this entry's data), and the server
        verifies it from the leaf hash *recomputed* from the data, so altered data cannot verify.
        """
        entry = self.raw_entry(index)
        if mode == "strict":
            _refuse_altered([entry])
        out = entry.view(with_data=True)
        leaf = merkle.leaf_hash(entry.data)
        checks = [_leaf_check(leaf == entry.leaf_hash), _record_check(_parses(entry.data))]
        out["checkpoint"] = out["inclusion_proof"] = None
        cp = self.log.latest_checkpoint()
        if cp is None or cp.checkpoint.size <= index:
            checks.append(
                {"name": "Inclusion proof", "ok": None, "detail": "no signed checkpoint covers this entry yet"}
            )
            return out | {"server_verdict": _verdict(checks, pending=True)}
        proof = self.log.inclusion_proof(index, cp.checkpoint.size)
        out["checkpoint"] = checkpoint_view(cp)
        out["inclusion_proof"] = [h.hex() for h in proof]
        sig = self._note_status(cp)
        checks.append({"name": "Checkpoint signature", "ok": sig["ok"], "detail": sig["detail"]})
        checks.append(_inclusion_check(index, cp, leaf, proof))
        return out | {"server_verdict": _verdict(checks)}

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoints(self, *, offset: int = 0, limit: int = 20) -> tuple[list[dict[str, Any]], int]:
        """Checkpoints newest first, each with its log-signature check and its witnesses' cosignatures
        (a malformed stored note is listed as such, not hidden)."""
        check_page(offset, limit)
        conn = self.log.read_connection()
        total = int(conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])
        sql = "SELECT id, size, root, note, time_ms FROM checkpoints ORDER BY id DESC LIMIT ? OFFSET ?"
        return [self._checkpoint_row(*row) for row in conn.execute(sql, (limit, offset)).fetchall()], total

    def _checkpoint_row(self, cid: int, size: int, root: bytes, note: str, time_ms: int) -> dict[str, Any]:
        try:
            signed: SignedCheckpoint | None = parse_signed_note(note)
        except XgateError:
            signed = None
        sql = "SELECT witness, line, time_ms FROM cosignatures WHERE checkpoint_id=? ORDER BY witness"
        cosigs = [self._cosignature(signed, *row) for row in self.log.read_connection().execute(sql, (cid,))]
        sig = self._note_status(signed) if signed is not None else {"ok": False, "detail": "malformed note"}
        if signed is not None and (signed.checkpoint.size != size or signed.checkpoint.root != bytes(root)):
            sig = {"ok": False, "detail": "stored row does not match its signed note"}
        return {
            "id": cid,
            "origin": signed.checkpoint.origin if signed else None,
            "size": size,
            "root": bytes(root).hex(),
            "published_at": _iso_ms(time_ms),
            "note": note,
            "signers": [s.name for s in signed.signatures] if signed else [],
            "signature": sig,
            "cosignatures": cosigs,
        }

    def _cosignature(self, signed: SignedCheckpoint | None, witness: str, line: str, time_ms: int) -> dict[str, Any]:
        ts = _cosignature_time(line)
        status: dict[str, Any] = {"ok": None, "detail": "witness key not configured"}
        if signed is not None and witness in self.witnesses:
            try:
                self.witnesses[witness].verify(add_cosignature(signed, line))
                status = {"ok": True, "detail": "cosignature verifies"}
            except XgateError as exc:
                status = {"ok": False, "detail": exc.message}
        return {
            "witness": witness,
            "cosigned_at": datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None,
            "stored_at": _iso_ms(time_ms),
            "verified": status,
        }

    def _note_status(self, signed: SignedCheckpoint) -> dict[str, Any]:
        if self.verifier is None:
            return {"ok": None, "detail": "log public key not configured on this gateway"}
        try:
            self.verifier.verify(signed)
        except XgateError as exc:
            return {"ok": False, "detail": exc.message}
        return {"ok": True, "detail": f"signed by {self.verifier.name}"}

    # -- alerts --------------------------------------------------------------------------------

    def alerts(
        self, since: datetime, until: datetime | None, cfg: AlertConfig, cap: int, *, mode: Mode = "strict"
    ) -> dict[str, Any]:
        """Alert rules over the entries in the window; in tolerant mode altered entries are listed
        and left out of the rules (never trusted), in strict mode they fail the read."""
        items: list[tuple[int, AuditRecord]] = []
        altered: list[int] = []
        offset = 0
        while offset < cap:
            page = self.page(Filters(since=since, until=until), offset=offset, limit=MAX_PAGE, mode=mode).entries
            for e in page:
                if e.problem() is None:
                    items.append((e.index, AuditRecord.parse(e.data)))
                else:
                    altered.append(e.index)
            offset += len(page)
            if len(page) < MAX_PAGE:
                break
        by_index = dict(items)
        alerts = [
            a.to_public()
            | {
                "entries": [_summary(i, by_index[i]) for i in a.entry_indices[:50]],
                "entries_truncated": len(a.entry_indices) > 50,
            }
            for a in evaluate(items, cfg)
        ]
        return {"scanned": offset, "truncated": offset >= cap, "altered": altered[:100], "alerts": alerts}

    # -- recording reads -----------------------------------------------------------------------

    def record_read(
        self, who: Any, route: str, *, kind: str = "audit_read", subjects: tuple[str, ...] = (), **meta: Any
    ) -> None:
        """Append who read what, under the request's id, before the answer leaves (InvalidInput if a
        filter cannot be recorded)."""
        clean = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in meta.items() if v is not None}
        actor = {"user": str(who.user), "agency": str(who.agency), "role": str(who.role)}
        event: dict[str, Any] = {
            "kind": kind,
            "actor": actor,
            "subjects": subjects,
            "metadata": {"route": route, **clean},
        }
        event["request_id"] = self.request_id
        self.log.append(AuditRecord.from_event(event))


@dataclass(frozen=True)
class ScanStep:
    total: int  # entries in the database when the scan began
    scanned: int  # entries checked so far
    altered: list[int]  # indices in this step whose data fails its leaf hash or is not a record


def scan_entries(db_path: Path, chunk: int = 2000) -> Iterator[ScanStep]:
    """Every stored entry of a database re-hashed and re-parsed, one step per ``chunk`` entries, on
    its own read-only connection (for a background whole-log check that reports progress and lists
    *every* altered entry; audit.verify.verify_log stays the authoritative verdict)."""
    conn = connect(db_path, readonly=True)
    try:
        total = int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        sql = "SELECT idx, leaf_hash, data FROM entries WHERE idx > ? ORDER BY idx LIMIT ?"
        last, scanned = -1, 0
        yield ScanStep(total, 0, [])
        while rows := [RawEntry(int(r[0]), bytes(r[1]), bytes(r[2])) for r in conn.execute(sql, (last, chunk))]:
            last, scanned = rows[-1].index, scanned + len(rows)
            yield ScanStep(total, scanned, [e.index for e in rows if e.problem() is not None])
    finally:
        conn.close()


def checkpoint_view(cp: SignedCheckpoint) -> dict[str, Any]:
    return {
        "origin": cp.checkpoint.origin,
        "size": cp.checkpoint.size,
        "root": cp.checkpoint.root.hex(),
        "note": cp.text(),
        "signers": [s.name for s in cp.signatures],
    }


def reason_of(metadata: dict[str, Any]) -> str | None:
    """The refusal reason a record carries, under whichever key its writer used."""
    for key in REASON_KEYS:
        value = metadata.get(key)
        if value:
            return "; ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    return None


def _refuse_altered(rows: Sequence[RawEntry]) -> None:
    for e in rows:
        problem = e.problem()
        if problem is not None:
            raise IntegrityError(f"stored audit entry {e.index}: {problem}", index=e.index)


def _parses(data: bytes) -> bool:
    try:
        AuditRecord.parse(data)
    except InvalidInput:
        return False
    return True


def _leaf_check(ok: bool) -> dict[str, Any]:
    detail = (
        "SHA-256(0x00 ‖ data) equals the stored leaf hash"
        if ok
        else "SHA-256(0x00 ‖ data) differs from the stored leaf hash: the entry was altered"
    )
    return {"name": "Leaf hash", "ok": ok, "detail": detail}


def _record_check(ok: bool) -> dict[str, Any]:
    detail = "canonical xgate-audit/1 record" if ok else "not a canonical xgate-audit/1 record"
    return {"name": "Record", "ok": ok, "detail": detail}


def _inclusion_check(index: int, cp: SignedCheckpoint, leaf: bytes, proof: list[bytes]) -> dict[str, Any]:
    size = cp.checkpoint.size
    try:
        merkle.verify_inclusion(index, size, leaf, proof, cp.checkpoint.root)
    except IntegrityError as exc:
        return {"name": "Inclusion proof", "ok": False, "detail": f"inclusion proof fails: {exc.message}"}
    return {"name": "Inclusion proof", "ok": True, "detail": f"included at {index} under the root of size {size}"}


def _verdict(checks: list[dict[str, Any]], pending: bool = False) -> dict[str, Any]:
    if any(c["ok"] is False for c in checks):
        status = "not_verified"
    elif pending:
        status = "pending"
    else:
        status = "verified" if all(c["ok"] for c in checks) else "incomplete"
    return {"status": status, "verified": status == "verified", "checks": checks}


def _cosignature_time(line: str) -> int | None:
    """The u64 timestamp a tlog-cosignature/v1 line carries (None if the line is not one)."""
    try:
        blob = base64.b64decode(line.rsplit(" ", 1)[-1], validate=True)
    except ValueError:
        return None
    return int(struct.unpack(">Q", blob[4:12])[0]) if len(blob) == 4 + 8 + 64 else None


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _summary(index: int, rec: AuditRecord) -> dict[str, Any]:
    return {
        "index": index,
        "time": rec.model_dump(mode="json")["time"],
        "kind": rec.kind,
        "user": rec.actor.user,
        "program": rec.program,
        "purpose": rec.purpose,
        "decision": rec.decision,
        "reason": reason_of(rec.metadata),
    }
