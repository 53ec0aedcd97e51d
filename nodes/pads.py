"""The node's one-time pad batches: which slots of which batch it has answered for.

A pad batch is opened by one request (the node draws a fresh seed and sends Enc(rho) for each
element) and then serves windows of slots, each slot once: answering the same slot twice would
hand the gateway x_A - rho and x_B - rho, hence x_A - x_B. Seeds live in this process's memory
only, so a restarted node knows no batch (the gateway opens a new one) and cannot be talked into
reusing an old batch's pads. The book is bounded: the least recently used batch is forgotten first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from crypto.he import SLOTS
from crypto.pads import BATCH_ID_BYTES, new_seed, pads
from xgate.errors import InvalidInput, PadUnknown

DEFAULT_MAX_BATCHES = 4096  # at most 1 kB of slot marks per element and batch (one bit per slot)


@dataclass
class _Batch:
    context_ref: str
    seed: bytes
    used: dict[str, int] = field(default_factory=dict)  # element -> slots answered, bit i for slot i


@dataclass(frozen=True)
class PadWindow:
    """The pads a request may use: each element's full pad and the window's slots."""

    seed: bytes
    start: int
    count: int

    def window(self, element: str) -> np.ndarray:
        return pads(self.seed, element)[self.start : self.start + self.count]

    def full(self, element: str) -> np.ndarray:
        return pads(self.seed, element)


class PadBook:
    def __init__(self, max_batches: int = DEFAULT_MAX_BATCHES) -> None:
        self._batches: OrderedDict[bytes, _Batch] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_batches

    def take(
        self, batch_id: bytes, context_ref: str, elements: Sequence[str], start: int, count: int, *, open_: bool
    ) -> PadWindow:
        """Claim slots [start, start + count) of the batch for these elements, or refuse.

        `open_`: the request opens the batch (a new id; its seed is drawn now). Otherwise the batch
        must be one this process opened, under the same HE context. A slot already answered for an
        element is refused, whoever asks; nothing is claimed unless every slot is free.
        """
        if len(batch_id) != BATCH_ID_BYTES:
            raise InvalidInput(f"pad_batch must be {BATCH_ID_BYTES} bytes")
        if count < 1 or start < 0 or start + count > SLOTS:
            raise InvalidInput(f"pad window [{start}, {start + count}) is outside the {SLOTS} slots")
        with self._lock:
            batch = self._batches.get(batch_id)
            if open_:
                if batch is not None:
                    raise InvalidInput("pad batch already open: a batch is opened once")
                batch = _Batch(context_ref, new_seed())
                self._batches[batch_id] = batch
                while len(self._batches) > self._max:
                    self._batches.popitem(last=False)
            elif batch is None:
                raise PadUnknown("this node does not hold that pad batch: open a new one")
            elif batch.context_ref != context_ref:
                raise InvalidInput("pad batch belongs to another HE context")
            self._batches.move_to_end(batch_id)
            window = ((1 << count) - 1) << start
            if any(batch.used.get(e, 0) & window for e in elements):
                raise InvalidInput("pad window overlaps slots already answered: each pad slot is used once")
            for e in elements:
                batch.used[e] = batch.used.get(e, 0) | window
            return PadWindow(batch.seed, start, count)

    def __len__(self) -> int:
        with self._lock:
            return len(self._batches)


__all__ = ["DEFAULT_MAX_BATCHES", "PadBook", "PadWindow"]
