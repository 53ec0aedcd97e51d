"""Offline verification of a whole audit database: recompute everything, trust nothing stored.

One streaming pass over the entries recomputes every leaf hash, re-validates every record against
its index columns and subject index, rebuilds the tree and compares every stored interior node,
and computes the root at every checkpointed size. Each stored checkpoint must carry a valid log
signature over exactly that root. Detects a changed byte, a deleted, inserted or reordered entry,
a truncated tail (checkpoints or nodes beyond the entries) and a rewritten history.

What it cannot detect alone: a history rewritten by someone holding the log signing key, if they
also re-sign every checkpoint, or a tail cut off together with the newer checkpoints. Pass the
witnesses' keys: the latest checkpoint must then carry cosignatures from a quorum of them
(audit/quorum.py), over roots the attacker cannot make them sign again (see witness.py); and pass
any checkpoint you hold from earlier (a note a witness or a colleague gave you): the log must
contain it, root for root.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import index, merkle
from audit.checkpoints import CosignatureVerifier, EccKey, NoteVerifier, SignedCheckpoint, add_cosignature
from audit.quorum import Quorum
from audit.records import AuditRecord
from audit.store import connect
from xgate.errors import IntegrityError, InvalidInput, NotFound, XgateError

# How far an entry's time may fall behind one appended before it. Records are stamped when made
# and appended in batches, so honest logs are out of order by at most the writer's queue delay; an
# entry dated further back was written later with a time chosen to look earlier (back-dated).
MAX_TIME_REGRESSION_MS = 5 * 60 * 1000


@dataclass(frozen=True)
class LogReport:
    origin: str
    size: int
    root: bytes
    checkpoints: int
    latest_checkpoint_size: int
    unsigned_tail: int  # entries after the latest checkpoint: protected by nothing yet
    cosignatures_verified: int
    cosignatures_unknown: int  # from witnesses whose keys were not supplied
    cosigned_by: tuple[str, ...] = ()  # the named witnesses whose cosignature on the latest checkpoint verified
    quorum: int = 0
    named_checkpoints: int = 0  # checkpoints the officer supplied, each found in the log


def verify_log(
    path: Path,
    public_key: EccKey,
    *,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int | None = None,
    named: Sequence[str] = (),
) -> LogReport:
    """Raise IntegrityError on any inconsistency; return what was verified.

    With ``witnesses``, the latest checkpoint and every note in ``named`` must carry valid
    cosignatures from at least ``quorum`` of them (default: all); every ``named`` note must be
    signed by the log key and be a checkpoint of this log (its size within the log, its root the
    log's root at that size).
    """
    rule = Quorum.of(witnesses, quorum)
    if not Path(path).exists():
        raise NotFound(f"audit database '{Path(path).name}' does not exist")
    conn = connect(Path(path), readonly=True)
    try:
        conn.execute("BEGIN")  # one snapshot, even beside a running writer
        return _verify(conn, public_key, rule, named)
    except sqlite3.DatabaseError as exc:
        raise IntegrityError("audit database is unreadable or structurally damaged") from exc
    except XgateError:
        raise
    except (TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        # A value of the wrong type or shape where the schema promises another: damage, not a crash.
        raise IntegrityError(f"audit database holds a malformed value ({type(exc).__name__})") from exc
    finally:
        conn.close()


def _verify(conn: sqlite3.Connection, public_key: EccKey, rule: Quorum, named_notes: Sequence[str]) -> LogReport:  # noqa: C901  # one pass over the log, each check a named step
    witnesses = rule.witnesses
    row = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()
    if row is None:
        raise IntegrityError("audit database has no origin")
    origin = row[0]
    verifier = NoteVerifier(origin, public_key)
    checkpoints: list[tuple[int, SignedCheckpoint]] = []
    for cid, size, root, note in conn.execute("SELECT id, size, root, note FROM checkpoints ORDER BY id"):
        signed = verifier.verify(note)
        cp = signed.checkpoint
        if cp.origin != origin or cp.size != size or cp.root != bytes(root):
            raise IntegrityError("checkpoint row does not match its signed note", checkpoint=cid)
        checkpoints.append((cid, signed))
    named = [verifier.verify(note) for note in named_notes]
    for signed in named:
        if signed.checkpoint.origin != origin:
            raise IntegrityError("a named checkpoint belongs to another log", origin=signed.checkpoint.origin)
        rule.check(signed, "the named checkpoint")
    wanted = {cp.checkpoint.size for _, cp in checkpoints} | {s.checkpoint.size for s in named}
    roots = {0: merkle.EMPTY_ROOT}

    nodes: Iterator[Any] = conn.execute("SELECT level, idx, hash FROM nodes ORDER BY ((idx + 1) << level), level")
    size = int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM entries").fetchone()[0])
    upto = index.read_upto(conn)
    # No mark: a log from before the index moved behind the appends (subjects indexed with every entry).
    subjects = _LookupRows(conn, "entry_subjects", size if upto is None else upto)
    requests = _LookupRows(conn, "entry_requests", 0 if upto is None else upto)
    frontier = merkle.Frontier()
    sql = (
        "SELECT idx, leaf_hash, data, kind, time_ms, user, agency, program, purpose, decision, request_id "
        "FROM entries ORDER BY idx"
    )
    latest_ms = 0
    for idx, leaf, data, *cols in conn.execute(sql):
        if idx != frontier.size:
            raise IntegrityError("audit entries are not contiguous (entry deleted or inserted)", index=frontier.size)
        data = bytes(data)
        if merkle.leaf_hash(data) != bytes(leaf):
            raise IntegrityError("audit entry does not match its leaf hash (entry altered)", index=idx)
        try:
            rec = AuditRecord.parse(data)
        except InvalidInput as exc:
            raise IntegrityError("audit entry is not a valid canonical record", index=idx) from exc
        a = rec.actor
        expect = [rec.kind, rec.time_ms, a.user, a.agency, rec.program, rec.purpose, rec.decision, rec.request_id]
        if list(cols) != expect:
            raise IntegrityError("audit entry index columns disagree with the record", index=idx)
        if rec.time_ms < latest_ms - MAX_TIME_REGRESSION_MS:
            raise IntegrityError(
                "audit entry is dated before entries appended ahead of it (back-dated)",
                index=idx,
                behind_s=(latest_ms - rec.time_ms) // 1000,
            )
        latest_ms = max(latest_ms, rec.time_ms)
        subjects.check(idx, rec.subjects)
        requests.check(idx, () if rec.request_id is None else (rec.request_id,))
        for level, i, h in frontier.append(bytes(leaf)):
            stored = next(nodes, None)
            if stored is None or (stored[0], stored[1], bytes(stored[2])) != (level, i, h):
                raise IntegrityError("stored tree node does not match the entries", level=level, node=i)
        if frontier.size in wanted:
            roots[frontier.size] = frontier.root()
    if next(nodes, None) is not None:
        raise IntegrityError("stored tree nodes extend beyond the entries (log truncated)", size=frontier.size)
    subjects.check_end()
    requests.check_end()

    for signed in named:
        cp = signed.checkpoint
        if cp.size > frontier.size:
            raise IntegrityError(
                f"the named checkpoint at size {cp.size} is beyond the log's {frontier.size} entries (log truncated)",
                checkpoint_size=cp.size,
                size=frontier.size,
            )
        if roots[cp.size] != cp.root:
            raise IntegrityError(
                f"the named checkpoint at size {cp.size} has another root than the log (history rewritten or forked)",
                size=cp.size,
            )
    by_witness = {w.name: w for w in witnesses}
    verified = unknown = 0
    latest = 0
    latest_signed: SignedCheckpoint | None = None
    for cid, signed in checkpoints:
        cp = signed.checkpoint
        if cp.size > frontier.size:
            raise IntegrityError(
                "a checkpoint covers more entries than the log holds (log truncated)",
                checkpoint_size=cp.size,
                size=frontier.size,
            )
        if roots[cp.size] != cp.root:
            raise IntegrityError("checkpoint root does not match the entries (history rewritten)", size=cp.size)
        for witness, line in conn.execute("SELECT witness, line FROM cosignatures WHERE checkpoint_id=?", (cid,)):
            signed = add_cosignature(signed, line)
            if witness in by_witness:
                by_witness[witness].verify(signed)
                verified += 1
            else:
                unknown += 1
        if cp.size >= latest:
            latest, latest_signed = cp.size, signed
    cosigned_by: tuple[str, ...] = ()
    if witnesses:
        if latest_signed is None:
            if frontier.size:
                raise IntegrityError(
                    "the log has no checkpoint for the named witnesses to have cosigned",
                    missing=[w.name for w in witnesses],
                )
        else:
            cosigned_by = rule.check(latest_signed, "the latest checkpoint")
    return LogReport(
        origin=origin,
        size=frontier.size,
        root=frontier.root(),
        checkpoints=len(checkpoints),
        latest_checkpoint_size=latest,
        unsigned_tail=frontier.size - latest,
        cosignatures_verified=verified,
        cosignatures_unknown=unknown,
        cosigned_by=cosigned_by,
        quorum=rule.k,
        named_checkpoints=len(named),
    )


class _LookupRows:
    """One lookup table's rows, consumed in entry order: below the index mark they must list
    exactly the entry's keys; above it (not indexed yet) there must be none."""

    def __init__(self, conn: sqlite3.Connection, table: str, upto: int) -> None:
        self.name = "subject index" if table == "entry_subjects" else "request index"
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE name=?", (table,)).fetchone()
        self._rows: Iterator[Any] = index.indexed_rows(conn, table) if has_table else iter(())
        self._next: tuple[int, str] | None = next(self._rows, None)
        self._upto = upto

    def check(self, idx: int, keys: Sequence[str]) -> None:
        mine = []
        while self._next is not None and self._next[0] == idx:
            mine.append(self._next[1])
            self._next = next(self._rows, None)
        if self._next is not None and self._next[0] < idx:
            raise IntegrityError(f"{self.name} refers to a missing entry", index=self._next[0])
        if mine != (sorted(set(keys)) if idx < self._upto else []):
            raise IntegrityError(f"{self.name} disagrees with the record", index=idx)

    def check_end(self) -> None:
        if self._next is not None:
            raise IntegrityError(f"{self.name} refers to a missing entry", index=self._next[0])
