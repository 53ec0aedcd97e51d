"""Tamper-tolerant reads of the audit database for the console.

`AuditLog.entries()` refuses a page as soon as one stored entry fails its leaf hash, which is
right for evidence APIs but leaves an officer blind exactly when something is wrong. The console
therefore reads raw rows (read-only), shows every row, and marks each one intact or altered; the
authoritative verdicts still come from audit.merkle / audit.verify.
"""

from __future__ import annotations

import base64
import sqlite3
import struct
from datetime import UTC, datetime
from typing import Any

from audit import merkle
from audit.alerts import AlertConfig, evaluate
from audit.checkpoints import (
    CosignatureVerifier,
    NoteVerifier,
    SignedCheckpoint,
    add_cosignature,
    parse_signed_note,
)
from audit.read import COUNT_CAP, RawEntry, query, raw_entry
from audit.records import AuditRecord
from audit.store import MAX_PAGE, AuditLog
from xgate.errors import IntegrityError, InvalidInput, XgateError

__all__ = ["COUNT_CAP", "RawEntry", "checkpoint_history", "entry_detail", "query", "raw_entry", "scan_alerts"]


def _cosignature_time(line: str) -> int | None:
    """The u64 timestamp a tlog-cosignature/v1 line carries (None if the line is not one)."""
    try:
        blob = base64.b64decode(line.rsplit(" ", 1)[-1], validate=True)
    except ValueError:
        return None
    return int(struct.unpack(">Q", blob[4:12])[0]) if len(blob) == 4 + 8 + 64 else None


def _verify_note(verifier: NoteVerifier | None, signed: SignedCheckpoint) -> dict[str, Any]:
    if verifier is None:
        return {"ok": None, "detail": "log public key not configured on this gateway"}
    try:
        verifier.verify(signed)
    except XgateError as exc:
        return {"ok": False, "detail": exc.message}
    return {"ok": True, "detail": f"signed by {verifier.name}"}


def checkpoint_history(
    conn: sqlite3.Connection,
    verifier: NoteVerifier | None,
    witnesses: dict[str, CosignatureVerifier],
    *,
    offset: int,
    limit: int,
) -> tuple[list[dict[str, Any]], int]:
    """Checkpoints newest first, each with its log-signature check and its witnesses' cosignatures."""
    total = int(conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])
    rows = conn.execute(
        "SELECT id, size, root, note, time_ms FROM checkpoints ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
    ).fetchall()
    out = []
    for cid, size, root, note, time_ms in rows:
        try:
            signed: SignedCheckpoint | None = parse_signed_note(note)
        except XgateError:
            signed = None
        cosigs = []
        for witness, line, cos_ms in conn.execute(
            "SELECT witness, line, time_ms FROM cosignatures WHERE checkpoint_id=? ORDER BY witness", (cid,)
        ):
            ts = _cosignature_time(line)
            status: dict[str, Any] = {"ok": None, "detail": "witness key not configured"}
            if signed is not None and witness in witnesses:
                try:
                    witnesses[witness].verify(add_cosignature(signed, line))
                    status = {"ok": True, "detail": "cosignature verifies"}
                except XgateError as exc:
                    status = {"ok": False, "detail": exc.message}
            cosigs.append(
                {
                    "witness": witness,
                    "cosigned_at": datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None,
                    "stored_at": _iso_ms(cos_ms),
                    "verified": status,
                }
            )
        sig = _verify_note(verifier, signed) if signed is not None else {"ok": False, "detail": "malformed note"}
        if signed is not None and (signed.checkpoint.size != size or signed.checkpoint.root != bytes(root)):
            sig = {"ok": False, "detail": "stored row does not match its signed note"}
        out.append(
            {
                "id": cid,
                "size": size,
                "root": bytes(root).hex(),
                "published_at": _iso_ms(time_ms),
                "note": note,
                "signature": sig,
                "cosignatures": cosigs,
            }
        )
    return out, total


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def entry_detail(log: AuditLog, conn: sqlite3.Connection, index: int, verifier: NoteVerifier | None) -> dict[str, Any]:
    """An entry with its raw data, the latest checkpoint, an inclusion proof and the server's verdict.

    The proof is built from the stored tree nodes (never from this entry's data), and the server
    verifies it from the leaf hash *recomputed* from the data, so altered data cannot verify.
    """
    size = log.size
    entry = raw_entry(conn, size, index)
    out = entry.view(with_data=True)
    cp = log.latest_checkpoint()
    checks: list[dict[str, Any]] = []
    leaf = merkle.leaf_hash(entry.data)
    checks.append(
        {
            "name": "Leaf hash",
            "ok": leaf == entry.leaf_hash,
            "detail": "SHA-256(0x00 ‖ data) equals the stored leaf hash"
            if leaf == entry.leaf_hash
            else "SHA-256(0x00 ‖ data) differs from the stored leaf hash: the entry was altered",
        }
    )
    parses = _parses(entry.data)
    checks.append(
        {
            "name": "Record",
            "ok": parses,
            "detail": "canonical xgate-audit/1 record" if parses else "not a canonical xgate-audit/1 record",
        }
    )
    out["checkpoint"] = None
    out["inclusion_proof"] = None
    if cp is None or cp.checkpoint.size <= index:
        checks.append({"name": "Inclusion proof", "ok": None, "detail": "no signed checkpoint covers this entry yet"})
        out["server_verdict"] = _verdict(checks, pending=True)
        return out
    size_cp = cp.checkpoint.size
    proof = log.inclusion_proof(index, size_cp)
    out["checkpoint"] = {
        "origin": cp.checkpoint.origin,
        "size": size_cp,
        "root": cp.checkpoint.root.hex(),
        "note": cp.text(),
        "signers": [s.name for s in cp.signatures],
    }
    out["inclusion_proof"] = [h.hex() for h in proof]
    sig = _verify_note(verifier, cp)
    checks.append({"name": "Checkpoint signature", "ok": sig["ok"], "detail": sig["detail"]})
    try:
        merkle.verify_inclusion(index, size_cp, leaf, proof, cp.checkpoint.root)
        checks.append(
            {"name": "Inclusion proof", "ok": True, "detail": f"included at {index} under the root of size {size_cp}"}
        )
    except IntegrityError as exc:
        checks.append({"name": "Inclusion proof", "ok": False, "detail": f"inclusion proof fails: {exc.message}"})
    out["server_verdict"] = _verdict(checks)
    return out


def _parses(data: bytes) -> bool:
    try:
        AuditRecord.parse(data)
    except InvalidInput:
        return False
    return True


def _verdict(checks: list[dict[str, Any]], pending: bool = False) -> dict[str, Any]:
    failed = [c for c in checks if c["ok"] is False]
    if failed:
        status = "not_verified"
    elif pending:
        status = "pending"
    else:
        status = "verified" if all(c["ok"] for c in checks) else "incomplete"
    return {"status": status, "verified": status == "verified", "checks": checks}


def scan_alerts(
    conn: sqlite3.Connection, size: int, since: datetime, until: datetime | None, cfg: AlertConfig, cap: int
) -> dict[str, Any]:
    """Alert rules over intact entries in the window; altered entries are counted, not trusted."""
    filters: dict[str, Any] = {"since": since, "until": until}
    items: list[tuple[int, AuditRecord]] = []
    altered: list[int] = []
    offset = 0
    while offset < cap:
        page, _ = query(conn, size, filters, offset=offset, limit=MAX_PAGE, newest_first=False)
        for e in page:
            if e.leaf_ok:
                try:
                    items.append((e.index, AuditRecord.parse(e.data)))
                    continue
                except InvalidInput:
                    pass
            altered.append(e.index)
        offset += len(page)
        if len(page) < MAX_PAGE:
            break
    alerts = evaluate(items, cfg)
    by_index = dict(items)
    out = []
    for a in alerts:
        shown = a.entry_indices[:50]
        out.append(
            a.to_public()
            | {
                "entries": [_summary(i, by_index[i]) for i in shown],
                "entries_truncated": len(a.entry_indices) > len(shown),
            }
        )
    return {"scanned": len(items) + len(altered), "truncated": offset >= cap, "altered": altered[:100], "alerts": out}


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


REASON_KEYS = ("reasons", "message", "reason", "error_message", "error", "error_code")


def reason_of(metadata: dict[str, Any]) -> str | None:
    """The refusal reason a record carries, under whichever key its writer used."""
    for key in REASON_KEYS:
        value = metadata.get(key)
        if value:
            return "; ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    return None
