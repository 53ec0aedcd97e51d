"""Before a log signs anything: does it still hold the history it signed and its witnesses cosigned?

A log that signs whatever history it finds lends its key to a forgery: started on a database
rewritten under another key, or cut back, it would put a valid signature on the damage. So the
gateway checks, at start and before every checkpoint,

* its latest stored checkpoint: signed by its own key, within the log, root equal to the log's
  root at that size (``check_own_checkpoint``);
* what each witness says it last cosigned (size, root, cosignature line): the log must hold that
  size and have that root there (``check_witness_view``).

Any failure is an ``AuditLogCompromised`` whose ``details.reason`` says what it is: ``resigned``
(not this key's checkpoint), ``truncated`` or ``forked``.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.checkpoints import Checkpoint, CosignatureVerifier, NoteVerifier
from audit.store import AuditLog
from xgate.errors import AuditLogCompromised, IntegrityError

REASONS = ("resigned", "truncated", "forked")


@dataclass(frozen=True)
class WitnessView:
    """What one witness last cosigned of this log (size 0: nothing yet)."""

    agency: str
    size: int
    root: bytes
    line: str = ""  # its cosignature line over that checkpoint, when it kept one


def check_own_checkpoint(log: AuditLog, verifier: NoteVerifier) -> int:
    """Raise AuditLogCompromised unless the latest stored checkpoint is this key's and matches the
    entries; return its size (0 without one)."""
    cp = log.latest_checkpoint()
    if cp is None:
        return 0
    try:
        signed = verifier.verify(cp)
    except IntegrityError:
        raise AuditLogCompromised(
            "the audit log's latest checkpoint is not signed by this gateway's key (log replaced or re-signed)",
            reason="resigned",
        ) from None
    size = signed.checkpoint.size
    if size > log.size:
        raise AuditLogCompromised(
            f"the audit log holds {log.size} entries but its latest signed checkpoint covers {size} (log truncated)",
            reason="truncated",
            size=log.size,
            checkpoint_size=size,
        )
    if log.root(size) != signed.checkpoint.root:
        raise AuditLogCompromised(
            f"the audit log's root at size {size} is not the one this gateway signed (history rewritten or forked)",
            reason="forked",
            size=size,
        )
    return size


def check_witness_view(log: AuditLog, view: WitnessView, verifier: CosignatureVerifier | None = None) -> None:
    """Raise AuditLogCompromised unless the log holds what the witness cosigned.

    The view's cosignature line, when present, must verify under the witness's key (IntegrityError
    otherwise: the statement is not the witness's, so it proves nothing either way).
    """
    if view.size == 0:
        return
    if len(view.root) != 32:
        raise IntegrityError(f"witness '{view.agency}' stated a size without a 32-byte root")
    if verifier is not None and view.line:
        verifier.verify(_note(log.origin, view))
    if view.size > log.size:
        raise AuditLogCompromised(
            f"witness '{view.agency}' cosigned {view.size} entries but the audit log holds {log.size} (log truncated)",
            reason="truncated",
            agency=view.agency,
            witnessed=view.size,
            size=log.size,
        )
    if log.root(view.size) != view.root:
        raise AuditLogCompromised(
            f"the audit log's root at size {view.size} differs from the one witness '{view.agency}' cosigned "
            "(log forked)",
            reason="forked",
            agency=view.agency,
            witnessed=view.size,
        )


def _note(origin: str, view: WitnessView) -> str:
    """The checkpoint the witness states, carrying only the witness's own cosignature line."""
    return Checkpoint(origin, view.size, view.root).body() + "\n" + view.line.rstrip("\n") + "\n"
