"""Audit events of a training job: plain dicts handed to `on_event` (the gateway appends them
to its audit log); the default sink writes JSON lines into the job directory.

Every event has: ts (UTC ISO), job_id, event, plus event-specific fields carrying only
agencies, node ids, counts, epsilons and SHA-256 digests, never data values. Events:
  job_submitted {job_digest, purpose, mode}           job_approved / job_refused {agency, reason, epsilon}
  run_started {run_id, nodes}                        round_completed {round, participants, aggregate_sha256}
  update_rejected {round, agency, reason}            node_dropped {round, agency|node_id}
  dp_spent {round, epsilon, delta, noise_multiplier} job_completed {model_sha256, metrics}
  job_failed {reason}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from xgate.errors import InvalidInput

OnEvent = Callable[[dict[str, Any]], None]


def make_event(job_id: str, event: str, **fields: Any) -> dict[str, Any]:
    return {"ts": datetime.now(UTC).isoformat(), "job_id": job_id, "event": event, **fields}


def arrays_sha256(arrays: Sequence[np.ndarray]) -> str:
    """Digest of a model/aggregate: shapes, dtypes and little-endian float64 bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a64 = np.ascontiguousarray(a, dtype="<f8")
        h.update(repr(a64.shape).encode())
        h.update(a64.tobytes())
    return h.hexdigest()


class JsonlSink:
    """Append-only JSON lines file; each line flushed so a crash loses at most the line being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, sort_keys=True, default=str) + "\n")


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete lines after byte `offset` (for tailing a file the ServerApp writes)."""
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    out: list[dict[str, Any]] = []
    at = offset
    for line in data[:end].splitlines(keepends=True):
        if line.strip():
            try:
                event = json.loads(line)
            except ValueError as exc:  # also UnicodeDecodeError: a damaged file, not a crash of its reader
                raise InvalidInput(f"{path}: the line at byte {at} is not a JSON event ({exc})") from None
            if not isinstance(event, dict):
                raise InvalidInput(f"{path}: the line at byte {at} is not a JSON object")
            out.append(event)
        at += len(line)
    return out, offset + end


def drop_partial_line(path: Path) -> None:
    """Cut a line its writer left unfinished (killed mid-write), so the next event starts a line."""
    try:
        with path.open("r+b") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass
