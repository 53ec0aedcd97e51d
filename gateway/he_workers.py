"""The gateway's HE worker processes: flooding and combining run beside the event loop, not in it.

TenSEAL holds the GIL for the whole of each operation (exchange/he_compute.py), so in threads the
checks in flight starved the event loop that admits, refuses and answers requests. Workers are
forked from a fork server that imported the HE modules once: a worker costs a fork, not a TenSEAL
import, and inherits none of the gateway's gRPC threads. They start on demand (a gateway that
serves no HE check starts none). A worker that dies (killed, out of memory) fails the checks it
held with `ComputeUnavailable` (503) and the next check gets a fresh pool. A cancelled check's job
is dropped while it still waits for a worker; one already running finishes and is discarded.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from crypto.he import FloodTerm
from exchange.eligibility import CriterionOutcome
from exchange.he_compute import CombineJob, combine, prepare_floods
from xgate.errors import ComputeUnavailable
from xgate.logging import get_logger

log = get_logger("xgate.gateway")

T = TypeVar("T")
PRELOAD = ["exchange.he_compute"]  # imported once by the fork server, shared by every worker


def default_workers() -> int:
    """One worker per core, at most four: the nodes and the event loop need the cores as well."""
    return max(1, min(4, os.cpu_count() or 1))


class ProcessHeCompute:
    """`HeCompute` over a pool of `workers` processes."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("an HE worker pool needs at least one worker")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._pool

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        pool = self._executor()
        try:
            # Cancelling the awaiting task cancels the job too while no worker has taken it.
            return await asyncio.wrap_future(pool.submit(fn, *args))
        except BrokenProcessPool as exc:
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
                log.error("he_worker_lost", workers=self.workers)
            raise ComputeUnavailable("a worker process of the gateway stopped during this check; retry") from exc

    async def floods(self, context_data: bytes, counts: Sequence[int]) -> list[FloodTerm]:
        return await self._run(prepare_floods, context_data, list(counts))

    async def combine(self, job: CombineJob) -> tuple[list[CriterionOutcome], bytes]:
        return await self._run(combine, job)

    def close(self) -> None:
        """Stop the workers; jobs still waiting are cancelled (the gateway is shutting down)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["ProcessHeCompute", "default_workers"]
