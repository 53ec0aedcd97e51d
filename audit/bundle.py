"""Evidence bundles: everything about one request, verifiable offline with the log's public key.

A bundle holds every entry carrying the request id (canonical bytes, base64), each entry's
inclusion proof to one signed checkpoint, and that checkpoint with its witness cosignatures. It
proves each entry was in the log the checkpoint commits to; it cannot prove that no other entry
with the same request id exists (a log cannot prove absence this way), so `verify-log` on the
full database stays the authoritative check.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import merkle
from audit.checkpoints import CosignatureVerifier, EccKey, NoteVerifier, SignedCheckpoint, parse_signed_note
from audit.quorum import Quorum
from audit.records import AuditRecord
from audit.store import MAX_PAGE, AuditLog, Entry
from xgate.errors import ConfigError, IntegrityError, InvalidInput, NotFound

BUNDLE_FORMAT = "xgate-audit-bundle/1"


def build_bundle(log: AuditLog, request_id: str, *, publish: bool = True) -> dict[str, Any]:
    """Collect the request's entries and prove them against the latest checkpoint.

    If no checkpoint covers them yet, publishes one (when ``publish`` and the log can sign).
    """
    entries: list[Entry] = []
    while True:
        page = log.entries(request_id=request_id, offset=len(entries), limit=MAX_PAGE)
        entries.extend(page)
        if len(page) < MAX_PAGE:
            break
    if not entries:
        raise NotFound("no audit entries for that request id")
    cp = log.latest_checkpoint()
    if cp is None or cp.checkpoint.size <= entries[-1].index:
        if not publish or log.signer is None:
            raise ConfigError("no checkpoint covers these entries yet; publish one first")
        cp = log.publish_checkpoint()
    size = cp.checkpoint.size
    return {
        "format": BUNDLE_FORMAT,
        "origin": cp.checkpoint.origin,
        "request_id": request_id,
        "checkpoint": cp.text(),
        "entries": [
            {
                "index": e.index,
                "leaf_hash": e.leaf_hash.hex(),
                "data_b64": base64.b64encode(e.data).decode(),
                "record": json.loads(e.data),
                "inclusion_proof": [h.hex() for h in log.inclusion_proof(e.index, size)],
            }
            for e in entries
        ],
    }


def write_bundle(bundle: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bundle, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def read_bundle(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(f"cannot read bundle '{Path(path).name}'") from exc
    if not isinstance(raw, dict):
        raise IntegrityError("bundle is not a JSON object")
    return raw


@dataclass(frozen=True)
class BundleReport:
    request_id: str
    entries: int
    checkpoint_size: int
    root: bytes
    witnesses: tuple[str, ...]


def verify_bundle(
    bundle: dict[str, Any],
    public_key: EccKey,
    *,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int | None = None,
    origin: str | None = None,
) -> BundleReport:
    """Raise IntegrityError unless every entry is proven into a checkpoint signed by ``public_key``
    for ``origin`` (default: the bundle's own) and cosigned by at least ``quorum`` of the given
    witnesses (default: all of them; the rule `verify-log` applies too, audit/quorum.py)."""
    rule = Quorum.of(witnesses, quorum)
    try:
        return _verify(bundle, public_key, rule, origin)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError, binascii.Error) as exc:
        if isinstance(exc, IntegrityError | InvalidInput):
            raise
        raise IntegrityError("bundle is malformed") from exc


def _verify(bundle: dict[str, Any], public_key: EccKey, rule: Quorum, origin: str | None) -> BundleReport:
    if bundle.get("format") != BUNDLE_FORMAT:
        raise IntegrityError("not an xgate audit bundle (unknown format)")
    note = bundle["checkpoint"]
    origin = origin or parse_signed_note(note).checkpoint.origin
    signed: SignedCheckpoint = NoteVerifier(origin, public_key).verify(note)
    cp = signed.checkpoint
    if bundle["origin"] != cp.origin:
        raise IntegrityError("bundle origin does not match its checkpoint")
    cosigned_by = rule.check(signed, "the bundle's checkpoint")
    request_id = bundle["request_id"]
    items = bundle["entries"]
    if not isinstance(items, list) or not items:
        raise IntegrityError("bundle carries no entries")
    seen: set[int] = set()
    for item in items:
        index = item["index"]
        if not isinstance(index, int) or index in seen:
            raise IntegrityError("bundle entry index is invalid or repeated")
        seen.add(index)
        data = base64.b64decode(item["data_b64"], validate=True)
        leaf = merkle.leaf_hash(data)
        if leaf.hex() != item["leaf_hash"]:
            raise IntegrityError("bundle entry does not match its leaf hash (entry altered)", index=index)
        try:
            record = AuditRecord.parse(data)
        except InvalidInput as exc:
            raise IntegrityError("bundle entry is not a valid canonical record", index=index) from exc
        if record.request_id != request_id:
            raise IntegrityError("bundle entry belongs to another request", index=index)
        if item["record"] != json.loads(data):
            raise IntegrityError("readable copy of a bundle entry differs from the signed data", index=index)
        proof = merkle.hashes_from_hex(item["inclusion_proof"])
        merkle.verify_inclusion(index, cp.size, leaf, proof, cp.root)
    return BundleReport(request_id, len(items), cp.size, cp.root, cosigned_by)
