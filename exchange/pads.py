"""The gateway's one-time pad batches: which window of which batch the next small check uses.

A small packed check (exchange/eligibility.py `packing`) does not ask its nodes for fresh
ciphertexts. Per (requester context, program, user) the gateway keeps one pad batch: the nodes sent
each element's Enc(rho) over all SLOTS slots once, when the batch was opened, and each later
check takes the next free window of n*k slots and gets back x - rho mod t for it (a few bytes
per slot). The combination adds Enc(rho) and x - rho into Enc(x) inside the one masking product.

Rules kept here:
* windows start at a multiple of the check's subject count n, so the result's slot blocks stay
  whole (block b of the result is slots [b*n, (b+1)*n)) and never overlap another check's;
* a check that finds no batch, or not enough free slots, opens a new one (window [0, n*k)); checks
  that arrive while a batch is being opened wait for its pads, since a node answers windows of a
  batch only once it has opened it; if the opening fails they try again (one of them opens);
* the pools are bounded (least recently used forgotten first): they hold the pad ciphertexts;
* a batch serves at most `max_windows` checks: a node's well-formed but wrong pad cannot be told
  from a right one here, so this bounds the results it spoils (each result's audit entry names its
  batch and pad digests, and the node's signed answer that opened the batch carries the same).

Pools are per gateway process. The nodes, not this bookkeeping, guarantee that no slot is
answered twice (nodes/pads.py), so two processes or a bug here cannot make a pad repeat.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from crypto.he import SLOTS
from crypto.pads import new_batch_id

DEFAULT_MAX_POOLS = 64  # x (elements x 393 kB): ~125 MB for the 低保 program's five elements
# A batch serves at most this many checks, then a new one is opened: the gateway cannot tell a
# well-formed but wrong pad from a right one, so this bounds how many results one bad pad spoils
# (2 MB of pads per 1,024 single 低保 checks: ~2 kB each).
DEFAULT_MAX_WINDOWS = 1024
_OPEN_ATTEMPTS = 3

PoolKey = tuple[str, ...]  # (context fingerprint, program id, program version, requesting user)


class PadBatchAbandoned(Exception):
    """The check opening a batch failed before its pads arrived."""


@dataclass
class _Pool:
    batch: bytes
    next_slot: int
    ready: asyncio.Future[Mapping[str, bytes]] = field(repr=False)
    windows: int = 1


@dataclass(frozen=True)
class PadLease:
    """A check's window of a pad batch. `pads` (element -> pad ciphertext) is None for the check
    that opens the batch: its own answers carry them (`PadPools.opened`)."""

    key: PoolKey
    batch: bytes
    offset: int
    opens: bool
    pads: Mapping[str, bytes] | None
    _pool: _Pool = field(repr=False, compare=False)


class PadPools:
    def __init__(self, max_pools: int = DEFAULT_MAX_POOLS, max_windows: int = DEFAULT_MAX_WINDOWS) -> None:
        self._pools: OrderedDict[PoolKey, _Pool] = OrderedDict()
        self._max = max_pools
        self._max_windows = max_windows

    async def lease(self, key: PoolKey, subjects: int, slots: int) -> PadLease:
        """The next window of `slots` slots (a multiple of `subjects`), opening a batch if needed."""
        if not 0 < subjects <= slots <= SLOTS or slots % subjects:
            raise ValueError("a pad window holds whole slot blocks of the check's subjects")
        for _ in range(_OPEN_ATTEMPTS):
            pool = self._pools.get(key)
            offset = -(-pool.next_slot // subjects) * subjects if pool is not None else 0
            if pool is None or offset + slots > SLOTS or pool.windows >= self._max_windows:
                return self._open(key, slots)
            pool.next_slot = offset + slots
            pool.windows += 1
            self._pools.move_to_end(key)
            try:
                pads = await asyncio.shield(pool.ready)
            except PadBatchAbandoned:
                continue  # its opener failed: open another (or wait for whoever does)
            return PadLease(key, pool.batch, offset, False, pads, pool)
        return self._open(key, slots)

    def _open(self, key: PoolKey, slots: int) -> PadLease:
        pool = _Pool(new_batch_id(), slots, asyncio.get_running_loop().create_future())
        self._pools[key] = pool
        self._pools.move_to_end(key)
        while len(self._pools) > self._max:
            _, evicted = self._pools.popitem(last=False)
            _abandon(evicted)
        return PadLease(key, pool.batch, 0, True, None, pool)

    def opened(self, lease: PadLease, pads: Mapping[str, bytes]) -> None:
        """The opening check's answers arrived with every element's pad: release the waiters."""
        if lease.opens and not lease._pool.ready.done():
            lease._pool.ready.set_result(dict(pads))

    def discard(self, lease: PadLease) -> None:
        """The batch is unusable (its opening failed, a node lost it, or a pad did not load):
        waiting checks try again, later ones open a new batch."""
        _abandon(lease._pool)
        if self._pools.get(lease.key) is lease._pool:
            del self._pools[lease.key]

    def __len__(self) -> int:
        return len(self._pools)


def _abandon(pool: _Pool) -> None:
    if not pool.ready.done():
        pool.ready.set_exception(PadBatchAbandoned())
        pool.ready.exception()  # retrieved: no "exception was never retrieved" warning without waiters


__all__ = ["DEFAULT_MAX_POOLS", "DEFAULT_MAX_WINDOWS", "PadBatchAbandoned", "PadLease", "PadPools", "PoolKey"]
