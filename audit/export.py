"""Export an audit database to plain files (JSON Lines) for archiving or third-party tools.

Each exported checkpoint is one signed note carrying the log signature and every witness
cosignature (C2SP tlog-cosignature lines inside the note), so Go's ``note.Open`` with the log's
and the witnesses' verifier keys (``xgate audit vkey``) checks all of them at once.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

from audit.db import with_cosignatures
from audit.store import connect
from xgate.errors import NotFound

EXPORT_FILES = ("entries.jsonl", "checkpoints.jsonl", "checkpoint", "manifest.json")


def export_log(db: Path, out: Path) -> dict[str, Any]:
    """Write entries.jsonl (index, leaf hash, canonical data), checkpoints.jsonl (one full signed
    note per checkpoint), ``checkpoint`` (the newest note alone) and manifest.json."""
    if not db.exists():
        raise NotFound(f"audit database '{db.name}' does not exist")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _export(db, out)
    except BaseException:  # a failed export leaves nothing that looks like one behind
        if made:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for name in EXPORT_FILES:
                (out / name).unlink(missing_ok=True)
        raise


def _export(db: Path, out: Path) -> dict[str, Any]:
    conn = connect(db, readonly=True)
    try:
        origin = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()[0]
        size = 0
        with open(out / "entries.jsonl", "w", encoding="utf-8") as fh:
            for idx, leaf, data in conn.execute("SELECT idx, leaf_hash, data FROM entries ORDER BY idx"):
                row = {"index": idx, "leaf_hash": bytes(leaf).hex(), "data_b64": base64.b64encode(data).decode()}
                fh.write(json.dumps(row, sort_keys=True) + "\n")
                size += 1
        count = 0
        latest = ""
        with open(out / "checkpoints.jsonl", "w", encoding="utf-8") as fh:
            for cid, note, time_ms in conn.execute("SELECT id, note, time_ms FROM checkpoints ORDER BY id").fetchall():
                signed = with_cosignatures(conn, (cid, note))
                row = {
                    "note": signed.text(),
                    "size": signed.checkpoint.size,
                    "signers": [s.name for s in signed.signatures],
                    "time_ms": time_ms,
                }
                fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
                count += 1
                latest = signed.text()
        if latest:  # the newest checkpoint as a plain note file, as Go tools read it
            (out / "checkpoint").write_text(latest, encoding="utf-8")
    finally:
        conn.close()
    manifest = {"format": "xgate-audit-export/1", "origin": origin, "size": size, "checkpoints": count}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
