"""The witness quorum rule shared by `verify-log` and `verify-bundle` (pure).

A checkpoint signed by the log key alone proves nothing against the holder of that key: they can
re-sign a rewritten or truncated history. With witnesses named, a checkpoint counts only if at
least ``k`` of them cosigned it (default: all named); anything less fails and names who is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from audit.checkpoints import CosignatureVerifier, SignedCheckpoint
from xgate.errors import IntegrityError, InvalidInput


@dataclass(frozen=True)
class Quorum:
    witnesses: tuple[CosignatureVerifier, ...]
    k: int

    @classmethod
    def of(cls, witnesses: Sequence[CosignatureVerifier], k: int | None = None) -> Quorum:
        names = [w.name for w in witnesses]
        if len(set(names)) != len(names):
            raise InvalidInput("a witness is named twice")
        # The cosigned message does not name the witness: one key under two names would let one
        # cosignature, copied under the other name, count twice.
        keys = [w.public_raw for w in witnesses]
        if len(set(keys)) != len(keys):
            raise InvalidInput("one witness key is named twice (under different names)")
        if k is None:
            k = len(witnesses)
        if witnesses and not 1 <= k <= len(witnesses):
            raise InvalidInput(f"--quorum must be between 1 and the {len(witnesses)} witnesses named")
        if not witnesses and k:
            raise InvalidInput("--quorum needs witnesses (--witness NAME=KEY)")
        return cls(tuple(witnesses), k)

    def check(self, signed: SignedCheckpoint, what: str = "checkpoint") -> tuple[str, ...]:
        """Names of the witnesses whose cosignature verified; IntegrityError if fewer than k.

        A cosignature that is present but does not verify is a failure in itself (a forged line),
        whatever the count.
        """
        good: list[str] = []
        missing: list[str] = []
        for w in self.witnesses:
            try:
                present = w.cosigned_at(signed) is not None
            except IntegrityError as exc:
                raise IntegrityError(
                    f"{what} at size {signed.checkpoint.size} carries a cosignature that does not verify",
                    witness=w.name,
                    size=signed.checkpoint.size,
                ) from exc
            (good if present else missing).append(w.name)
        if len(good) < self.k:
            raise IntegrityError(
                f"{what} at size {signed.checkpoint.size} has {len(good)} of the {self.k} witness cosignatures "
                f"required; missing: {', '.join(missing)}",
                size=signed.checkpoint.size,
                cosigned_by=good,
                missing=missing,
                quorum=self.k,
            )
        return tuple(good)
