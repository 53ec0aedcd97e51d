"""Small factories for tests and benchmarks of code that writes audit records."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from audit.checkpoints import Cosigner, Signer, generate_key
from audit.records import Actor, AuditRecord, now_ms

ORIGIN = "test.xgate/audit"


def pseudonym(i: int) -> str:
    """A syntactically valid pseudonym (26 base32 chars) derived from ``i``."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    digest = hashlib.sha256(str(i).encode()).digest()
    return "".join(alphabet[b % 32] for b in digest[:26])


def record(
    i: int = 0,
    *,
    kind: str = "request",
    user: str = "cw-001",
    agency: str = "civil_affairs",
    request_id: str | None = None,
    decision: Literal["allow", "deny"] | None = None,
    subjects: tuple[str, ...] | None = None,
    time: datetime | None = None,
    **extra: Any,
) -> AuditRecord:
    return AuditRecord(
        kind=kind,
        time=time or now_ms(),
        actor=Actor(user=user, agency=agency, role="caseworker"),
        request_id=request_id or f"req-{i:08d}",
        program="dibao",
        purpose="eligibility",
        legal_basis="reg-2024-17",
        decision=decision,
        subjects=(pseudonym(i),) if subjects is None else subjects,
        digests={"result": hashlib.sha256(str(i).encode()).hexdigest()},
        **extra,
    )


def log_signer(origin: str = ORIGIN) -> Signer:
    return Signer(origin, generate_key())


def witness_cosigner(name: str = "witness.tax.example") -> Cosigner:
    return Cosigner(name, generate_key())
