"""A subject access report a person can read: who looked at this person's data, when and why.

Modelled on Estonia's Data Tracker: one row per access (who, when, which agency, program, purpose,
legal basis, outcome), and for each row the evidence it rests on: the audit entries' inclusion
proofs into one signed (and cosigned) checkpoint, verified before the page is written. A report
whose evidence does not verify is not written at all.

``build_report`` reads an open AuditLog (a database file); ``report_from_views`` builds the same
report from what the gateway's REST API answered, trusting none of it: every record is re-hashed,
every proof checked against a checkpoint note verified with the log key held by the officer.
``render_html`` returns the page as text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from audit import merkle
from audit.checkpoints import CosignatureVerifier, EccKey, NoteVerifier, SignedCheckpoint
from audit.query import Filters, find_all, outcome
from audit.quorum import Quorum
from audit.records import STORED, AuditRecord
from audit.store import MAX_PAGE, AuditLog, Entry
from xgate.errors import IntegrityError, InvalidInput
from xgate.pseudonym import contains_national_id

REPORT_CAP = 10_000  # accesses per report
# What a row shows in place of a caller's text (case id, legal basis) that holds a resident identity
# number: entries written before the records refused one stay in the log, but a report shows its
# rows to the person it is about, never to whoever else the case id named.
WITHHELD = "(withheld: holds an identity number)"


def _shown(text: str) -> str:
    return WITHHELD if contains_national_id(text) else text


@dataclass(frozen=True)
class Evidence:
    index: int
    kind: str
    leaf_hash: str
    proof: tuple[str, ...]


@dataclass(frozen=True)
class AccessRow:
    time: datetime
    user: str
    agency: str
    role: str
    program: str
    purpose: str
    legal_basis: str
    case_id: str
    outcome: str
    request_id: str
    evidence: tuple[Evidence, ...]
    sealed: bool  # covered by the checkpoint (proofs verified); False: appended after it


@dataclass(frozen=True)
class SubjectReport:
    subject_label: str  # masked national id (or the pseudonym when the officer gave only that)
    pseudonym: str
    since: datetime | None
    until: datetime | None
    generated: datetime
    origin: str
    checkpoint: SignedCheckpoint
    cosigned_by: tuple[str, ...]
    rows: tuple[AccessRow, ...]
    timezone: str = "Asia/Shanghai"
    notes: tuple[str, ...] = field(default=())


def mask_national_id(national_id: str) -> str:
    """Keep the region prefix (6) and the last 4 characters; the birth date and sequence are hidden."""
    return national_id[:6] + "*" * (len(national_id) - 10) + national_id[-4:]


def build_report(
    log: AuditLog,
    pseudonym: str,
    public_key: EccKey,
    *,
    since: datetime | None,
    until: datetime | None,
    generated: datetime,
    subject_label: str | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int | None = None,
    timezone: str = "Asia/Shanghai",
) -> SubjectReport:
    """Collect the subject's accesses in the period and verify every entry's inclusion proof
    against the latest checkpoint, whose log signature (and witness quorum) is checked first."""
    rule = Quorum.of(witnesses, quorum)
    cp = log.latest_checkpoint()
    if cp is None:
        raise IntegrityError("the log has no signed checkpoint to verify a report against")
    signed = NoteVerifier(log.origin, public_key).verify(cp)
    cosigned_by = rule.check(signed, "the latest checkpoint") if witnesses else ()
    size, root = signed.checkpoint.size, signed.checkpoint.root
    rows: list[AccessRow] = []
    for entry in find_all(log, Filters(subject=pseudonym, since=since, until=until), cap=REPORT_CAP):
        rec = entry.record
        related = [entry]
        if rec.request_id is not None and rec.kind == "policy_decision":
            related += log.entries(request_id=rec.request_id, kind="result", limit=MAX_PAGE)
        sealed = all(e.index < size for e in related)
        evidence = tuple(_evidence(log, e, size, root) for e in related if e.index < size)
        rows.append(
            AccessRow(
                time=rec.time,
                user=rec.actor.user,
                agency=rec.actor.agency,
                role=rec.actor.role,
                program=rec.program or "",
                purpose=rec.purpose or "",
                legal_basis=_shown(rec.legal_basis or ""),
                case_id=_shown(rec.case_id or ""),
                outcome=outcome(log, entry),
                request_id=rec.request_id or "",
                evidence=evidence,
                sealed=sealed,
            )
        )
    notes = []
    if len(rows) >= REPORT_CAP:
        notes.append(f"Only the first {REPORT_CAP} accesses are listed.")
    return SubjectReport(
        subject_label=subject_label or pseudonym,
        pseudonym=pseudonym,
        since=since,
        until=until,
        generated=generated,
        origin=log.origin,
        checkpoint=signed,
        cosigned_by=cosigned_by,
        rows=tuple(rows),
        timezone=timezone,
        notes=tuple(notes),
    )


def _evidence(log: AuditLog, entry: Entry, size: int, root: bytes) -> Evidence:
    proof = log.inclusion_proof(entry.index, size)
    merkle.verify_inclusion(entry.index, size, merkle.leaf_hash(entry.data), proof, root)
    return Evidence(entry.index, entry.record.kind, entry.leaf_hash.hex(), tuple(h.hex() for h in proof))


# Why report_from_views refused: the entries came proven against different checkpoints (the CLI
# fetches again: an honest log may have published one meanwhile).
CHECKPOINT_MOVED = "checkpoint_moved"


def report_from_views(
    origin: str,
    public_key: EccKey,
    decisions: Sequence[dict[str, object]],
    results: dict[str, list[dict[str, object]]],
    *,
    pseudonym: str,
    since: datetime | None,
    until: datetime | None,
    generated: datetime,
    subject_label: str | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int | None = None,
    timezone: str = "Asia/Shanghai",
) -> SubjectReport:
    """The report from REST views (``GET /v1/audit/entries/{index}``: record, leaf hash, checkpoint
    note, inclusion proof): ``decisions`` the entries naming the subject, ``results`` each request's
    result entries. Rows are built from the verified records, never from a server's summary."""
    rule = Quorum.of(witnesses, quorum)
    verifier = NoteVerifier(origin, public_key)
    notes: dict[int, SignedCheckpoint] = {}
    rows: list[AccessRow] = []
    for view in decisions:
        rec, ev = _verified(view, verifier, notes)
        if pseudonym not in rec.subjects:
            raise IntegrityError("an entry listed as an access does not name the subject", index=view.get("index"))
        related = [(rec, ev)]
        if rec.kind == "policy_decision" and rec.request_id is not None:
            for r in results.get(rec.request_id, []):
                r_rec, r_ev = _verified(r, verifier, notes)
                if r_rec.request_id != rec.request_id or r_rec.kind != "result":
                    raise IntegrityError("a result entry belongs to another request", index=r.get("index"))
                related.append((r_rec, r_ev))
        answered = len(related) > 1
        outcome = "refused" if rec.decision == "deny" else ("answered" if answered else "not answered")
        if rec.kind != "policy_decision" and rec.decision is None:
            outcome = rec.kind
        rows.append(
            AccessRow(
                time=rec.time, user=rec.actor.user, agency=rec.actor.agency, role=rec.actor.role,
                program=rec.program or "", purpose=rec.purpose or "", legal_basis=_shown(rec.legal_basis or ""),
                case_id=_shown(rec.case_id or ""), outcome=outcome, request_id=rec.request_id or "",
                evidence=tuple(e for _, e in related if e is not None), sealed=all(e is not None for _, e in related),
            )
        )  # fmt: skip
    if not notes:
        raise IntegrityError("no checkpoint covers these entries yet; publish one and ask again")
    if len(notes) > 1:
        # Only one checkpoint is checked against the witnesses: an entry proven into another
        # (smaller) one rests on the log key alone, which can sign a forked tree for it.
        raise IntegrityError(
            "the entries are proven against different checkpoints (sizes "
            f"{', '.join(str(s) for s in sorted(notes))}): the log moved while the report was fetched, "
            "or the gateway forked it; ask again",
            reason=CHECKPOINT_MOVED,
        )
    (signed,) = notes.values()
    cosigned_by = rule.check(signed, "the latest checkpoint") if witnesses else ()
    return SubjectReport(
        subject_label=subject_label or pseudonym, pseudonym=pseudonym, since=since, until=until,
        generated=generated, origin=origin, checkpoint=signed, cosigned_by=cosigned_by,
        rows=tuple(sorted(rows, key=lambda r: r.time)), timezone=timezone,
    )  # fmt: skip


def _verified(
    view: dict[str, object], verifier: NoteVerifier, notes: dict[int, SignedCheckpoint]
) -> tuple[AuditRecord, Evidence | None]:
    """The record of one REST entry view, its leaf hash recomputed and its proof checked (None: not
    yet under a checkpoint)."""
    try:
        index = int(view["index"])  # type: ignore[call-overload]
        record = AuditRecord.model_validate(view["record"], context=STORED)
        leaf = merkle.leaf_hash(record.canonical())
        if leaf.hex() != view["leaf_hash"]:
            raise IntegrityError("an entry's record does not hash to its leaf hash (altered)", index=index)
        proof_hex = view.get("inclusion_proof")
        checkpoint = view.get("checkpoint")
        if proof_hex is None or not isinstance(checkpoint, dict):
            return record, None
        signed = verifier.verify(str(checkpoint["note"]))
        notes.setdefault(signed.checkpoint.size, signed)
        if notes[signed.checkpoint.size].checkpoint.root != signed.checkpoint.root:
            raise IntegrityError("two checkpoints of one size with different roots (forked log)")
        proof = merkle.hashes_from_hex(proof_hex)  # type: ignore[arg-type]
        merkle.verify_inclusion(index, signed.checkpoint.size, leaf, proof, signed.checkpoint.root)
    except (KeyError, TypeError, ValueError, InvalidInput) as exc:
        raise IntegrityError("the gateway's answer is not a valid audit entry view") from exc
    return record, Evidence(index, record.kind, leaf.hex(), tuple(h.hex() for h in proof))


_OUTCOME_TEXT = {
    "answered": "Answered",
    "not answered": "Not answered (the exchange did not complete)",
    "refused": "Refused by policy",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans",sans-serif;margin:2rem auto;max-width:70rem;
color:#1b1f24;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem}
.meta{color:#57606a}.meta dt{font-weight:600;float:left;clear:left;width:11rem}.meta dd{margin-left:11rem}
table{border-collapse:collapse;width:100%;font-size:.92rem}th,td{border:1px solid #d0d7de;padding:.35rem .5rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}
.ok{color:#1a7f37;font-weight:600}.warn{color:#9a6700;font-weight:600}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.8rem}
details summary{cursor:pointer}code{font-size:.78rem;word-break:break-all}
"""


def _when(value: datetime, tz: ZoneInfo) -> str:
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def render_html(report: SubjectReport) -> str:
    """The report as one self-contained HTML page (no scripts, no external resources)."""
    e = html.escape
    tz = ZoneInfo(report.timezone)
    cp = report.checkpoint.checkpoint
    period = (
        f"{_when(report.since, tz) if report.since else 'the beginning of the log'} to "
        f"{_when(report.until, tz) if report.until else 'now'}"
    )
    witnesses = ", ".join(report.cosigned_by) if report.cosigned_by else "none checked"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Who accessed this person's data — {e(report.subject_label)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Who accessed this person's data</h1>",
        '<dl class="meta">',
        f"<dt>Person</dt><dd>{e(report.subject_label)}</dd>",
        f"<dt>Pseudonym</dt><dd><code>{e(report.pseudonym)}</code></dd>",
        f"<dt>Period</dt><dd>{e(period)}</dd>",
        f"<dt>Accesses</dt><dd id='access-count'>{len(report.rows)}</dd>",
        f"<dt>Report made</dt><dd>{e(_when(report.generated, tz))}</dd>",
        f"<dt>Audit log</dt><dd>{e(report.origin)}</dd>",
        "</dl>",
        "<h2>Accesses</h2>",
    ]
    if not report.rows:
        parts.append("<p id='no-accesses'>Nobody accessed this person's data in this period.</p>")
    else:
        parts.append(
            "<table id='accesses'><thead><tr><th>When</th><th>Who</th><th>Agency</th><th>Program</th>"
            "<th>Purpose</th><th>Legal basis</th><th>Case</th><th>Outcome</th><th>Evidence</th></tr></thead><tbody>"
        )
        for r in report.rows:
            parts.append(
                "<tr>"
                f"<td>{e(_when(r.time, tz))}</td><td>{e(r.user)} <span class='meta'>({e(r.role)})</span></td>"
                f"<td>{e(r.agency)}</td><td>{e(r.program)}</td><td>{e(r.purpose)}</td><td>{e(r.legal_basis)}</td>"
                f"<td>{e(r.case_id)}</td><td>{e(_OUTCOME_TEXT.get(r.outcome, r.outcome))}</td>"
                f"<td>{_evidence_cell(r)}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts += [f"<p class='warn'>{e(n)}</p>" for n in report.notes]
    parts += [
        "<h2>How this report was verified</h2>",
        "<p>Every access above is an entry of the federation's append-only audit log. Each entry's "
        "inclusion proof was checked against the checkpoint below, whose signature by the log key was "
        "verified; witnesses at the agencies cosign a checkpoint only after checking it extends what they "
        "saw before. Anyone holding the log's public key can repeat these checks "
        "(<code>xgate audit verify-log</code>).</p>",
        '<dl class="meta">',
        f"<dt>Checkpoint size</dt><dd id='checkpoint-size'>{cp.size} entries</dd>",
        f"<dt>Root hash</dt><dd><code>{cp.root.hex()}</code></dd>",
        "<dt>Log signature</dt><dd class='ok'>verified</dd>",
        f"<dt>Witness cosignatures</dt><dd id='cosigned-by'>{e(witnesses)}</dd>",
        "</dl>",
        f"<pre id='checkpoint-note'>{e(report.checkpoint.text())}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _evidence_cell(row: AccessRow) -> str:
    e = html.escape
    status = (
        "<span class='ok'>proof verified</span>"
        if row.sealed
        else "<span class='warn'>recorded after the checkpoint: not yet sealed</span>"
    )
    items = []
    for ev in row.evidence:
        proof = "".join(f"<li><code>{h}</code></li>" for h in ev.proof)
        items.append(f"<p>entry {ev.index} ({e(ev.kind)}), leaf <code>{ev.leaf_hash}</code></p><ol>{proof}</ol>")
    request = f"<p>request <code>{e(row.request_id)}</code></p>" if row.request_id else ""
    return f"{status}<details><summary>inclusion proof</summary>{request}{''.join(items)}</details>"
