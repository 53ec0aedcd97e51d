"""Tamper-evident audit log: RFC 9162 Merkle tree over SQLite, signed checkpoints, witnesses.

The names other packages use are re-exported here; see docs/AUDIT.md.
"""

from audit.checkpoints import (
    CosignatureVerifier,
    NoteVerifier,
    SignedCheckpoint,
    Signer,
    generate_key,
    load_private_key,
    load_public_key,
    save_keypair,
)
from audit.records import Actor, AuditRecord
from audit.store import AppendReceipt, AuditLog, AuditUnavailable, Entry
from audit.witness import Witness, WitnessConflict

__all__ = [
    "Actor",
    "AppendReceipt",
    "AuditLog",
    "AuditRecord",
    "AuditUnavailable",
    "CosignatureVerifier",
    "Entry",
    "NoteVerifier",
    "SignedCheckpoint",
    "Signer",
    "Witness",
    "WitnessConflict",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "save_keypair",
]
