"""Export an audit database to plain files (JSON Lines) for archiving or third-party tools."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from audit.store import connect
from xgate.errors import NotFound


def export_log(db: Path, out: Path) -> dict[str, Any]:
    """Write entries.jsonl (index, leaf hash, canonical data), checkpoints.jsonl and manifest.json."""
    if not db.exists():
        raise NotFound(f"audit database '{db.name}' does not exist")
    out.mkdir(parents=True, exist_ok=True)
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
        with open(out / "checkpoints.jsonl", "w", encoding="utf-8") as fh:
            for cid, note, time_ms in conn.execute("SELECT id, note, time_ms FROM checkpoints ORDER BY id"):
                lines = [r[0] for r in conn.execute("SELECT line FROM cosignatures WHERE checkpoint_id=?", (cid,))]
                fh.write(json.dumps({"note": note, "cosignatures": lines, "time_ms": time_ms}, sort_keys=True) + "\n")
                count += 1
    finally:
        conn.close()
    manifest = {"format": "xgate-audit-export/1", "origin": origin, "size": size, "checkpoints": count}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
