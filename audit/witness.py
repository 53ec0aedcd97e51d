"""A witness: an agency node's memory of the gateway log, so a rewritten history cannot go unnoticed.

The gateway log key alone cannot stop its holder from re-signing a different history. A witness
remembers the last checkpoint it cosigned and cosigns a new one only if it is signed by the log key
AND provably extends the remembered one (consistency proof). Truncation, forks and rollbacks raise
IntegrityError. The remembered state is written (fsync + rename) before a cosignature is returned.
Protocol shape follows C2SP tlog-witness: the caller states the size its proof starts from; a
stale view gets a 409-style `WitnessConflict` carrying the witness's current size.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audit.checkpoints import CosignatureVerifier, Cosigner, EccKey, NoteVerifier, SignedCheckpoint
from audit.merkle import verify_consistency
from xgate.errors import IntegrityError
from xgate.errors import WitnessConflict as WitnessConflict  # re-exported: raised here
from xgate.logging import get_logger

log = get_logger("xgate.audit.witness")


@dataclass(frozen=True)
class WitnessState:
    size: int
    root: bytes
    line: str = ""  # the cosignature line it returned for that checkpoint (empty in older state files)


class Witness:
    def __init__(
        self, name: str, key: EccKey, log_verifier: NoteVerifier, origin: str, state_file: Path | None
    ) -> None:
        self.cosigner = Cosigner(name, key)
        self.log_verifier = log_verifier
        self.origin = origin
        self.state_file = state_file
        self._lock = threading.Lock()
        self._state = self._load()

    @property
    def name(self) -> str:
        return self.cosigner.name

    def verifier(self) -> CosignatureVerifier:
        return self.cosigner.verifier()

    @property
    def state(self) -> WitnessState | None:
        return self._state

    def cosign(
        self, note: str, proof: Sequence[bytes] = (), *, old_size: int | None = None, now: int | None = None
    ) -> str:
        """Verify ``note`` and its consistency with the last cosigned checkpoint; return a signature line.

        ``proof`` is a consistency proof from ``old_size`` (the size the caller believes this witness
        last cosigned; 0 or None for a witness that has cosigned nothing).
        """
        signed: SignedCheckpoint = self.log_verifier.verify(note)
        cp = signed.checkpoint
        if cp.origin != self.origin:
            raise IntegrityError("checkpoint origin is not the witnessed log", origin=cp.origin)
        with self._lock:
            prev = self._state
            prev_size = prev.size if prev else 0
            if old_size is not None and old_size != prev_size:
                raise WitnessConflict("consistency proof starts from the wrong size", witness_size=prev_size)
            if prev is not None and prev.size > 0:  # an empty log commits to nothing: anything extends it
                if cp.size < prev.size:
                    raise IntegrityError(
                        "checkpoint is smaller than one already cosigned (truncated log)",
                        size=cp.size,
                        witnessed=prev.size,
                        reason="truncated",
                    )
                if cp.size == prev.size:
                    if cp.root != prev.root:
                        raise IntegrityError(
                            "checkpoint root differs at a witnessed size (forked log)", size=cp.size, reason="forked"
                        )
                else:
                    try:
                        verify_consistency(prev.size, cp.size, prev.root, cp.root, proof)
                    except IntegrityError as exc:
                        raise IntegrityError(
                            "checkpoint does not extend the witnessed one (forked log)",
                            size=cp.size,
                            witnessed=prev.size,
                            reason="forked",
                        ) from exc
            line = self.cosigner.cosign(cp, int(time.time()) if now is None else now)
            state = WitnessState(cp.size, cp.root, line.text())
            self._save(state)
            self._state = state
        log.info("witness_cosigned", origin=cp.origin, size=cp.size, witness=self.name)
        return line.text()

    def _load(self) -> WitnessState | None:
        if self.state_file is None or not self.state_file.exists():
            return None
        try:
            raw = json.loads(self.state_file.read_text())
            if raw["origin"] != self.origin:
                raise IntegrityError("witness state file belongs to another log")
            return WitnessState(int(raw["size"]), bytes.fromhex(raw["root"]), str(raw.get("line", "")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError("witness state file is unreadable") from exc

    def _save(self, state: WitnessState) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        with open(tmp, "w") as fh:
            json.dump({"origin": self.origin, "size": state.size, "root": state.root.hex(), "line": state.line}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_file)
