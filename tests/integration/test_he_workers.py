"""gateway/he_workers.py: the checks' HE arithmetic in real worker processes.

The same checks as tests/unit/test_check_service.py (fake nodes, every other port faked), with the
combine and the flood terms computed in worker processes: the requester still decrypts the oracle
in every view, a node's bad answer still fails the check naming the agency (the error crosses the
process boundary whole), a worker killed mid-check fails that check with a 503 and the next check
gets a fresh pool, and the event loop keeps running while a worker computes (which it does not
when TenSEAL runs in a thread: the attack this module exists to stop).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from exchange.service import CheckService
from gateway.he_workers import ProcessHeCompute
from policies.programs import ProgramRegistry
from policies.types import PolicyOutcome
from tests.unit.test_check_service import (
    HASH_1,
    SUBJECTS,
    FakeNodes,
    FakePolicy,
    _bad_ciphertext,
    _request,
    _service,
    _signs,
    oracle,
    run,
)
from xgate.errors import ComputeUnavailable, NodeProtocolError


@pytest.fixture(scope="module")
def compute() -> Iterator[ProcessHeCompute]:
    pool = ProcessHeCompute(1)
    yield pool
    pool.close()


def _workers(service: CheckService) -> ProcessHeCompute:
    assert isinstance(service.compute, ProcessHeCompute)
    return service.compute


@pytest.mark.parametrize("view", ["per_criterion", "overall", "cohort"])
def test_the_requester_decrypts_the_oracle_when_workers_combine(
    programs: ProgramRegistry, requester_keys: Any, compute: ProcessHeCompute, view: str
) -> None:
    policy = FakePolicy(PolicyOutcome(view, ("p-1",), HASH_1))
    service, _, _, auditor = _service(programs, policy=policy, compute=compute)
    outcome = run(service, _request(mode="he", public_context=requester_keys.public_context))
    assert auditor.kinds()[-1] == "result"
    dibao = programs.get("dibao")
    if view == "per_criterion":
        assert _signs(requester_keys, outcome, len(SUBJECTS)) == oracle(dibao, SUBJECTS)
    elif view == "overall":  # criteria in a hidden order per subject: the count of failures is what is kept
        signs = _signs(requester_keys, outcome, len(SUBJECTS))
        failures = [sum(not s[j] for s in signs.values()) for j in range(len(SUBJECTS))]
        expected = oracle(dibao, SUBJECTS)
        assert failures == [sum(not v[j] for v in expected.values()) for j in range(len(SUBJECTS))]
    else:
        expected = oracle(dibao, tuple(reversed(SUBJECTS)))  # FixedRandomness reverses, never flips
        for verdict in outcome.criteria:
            assert (
                list(requester_keys.decrypt_signs(verdict.ciphertexts[0], len(SUBJECTS))) == expected[verdict.criterion]
            )


def test_a_bad_node_answer_found_in_a_worker_names_the_agency(
    programs: ProgramRegistry, requester_keys: Any, compute: ProcessHeCompute
) -> None:
    service, _, _, auditor = _service(programs, nodes=FakeNodes(garble=_bad_ciphertext), compute=compute)
    with pytest.raises(NodeProtocolError, match=r"agency 'tax'.*invalid ciphertext") as info:
        run(service, _request(mode="he", public_context=requester_keys.public_context))
    assert info.value.agency == "tax" and info.value.http_status == 502
    assert "result" not in auditor.kinds()


def _kill_workers_while_busy(pool: ProcessHeCompute) -> None:
    """Kill the pool's workers as soon as one exists (the check's flood job starts one)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        executor = pool._pool  # the test reaches in to find the worker's pid
        pids = list(getattr(executor, "_processes", None) or {})
        if pids:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.005)


def test_a_worker_killed_mid_check_fails_that_check_and_the_next_one_is_served(
    programs: ProgramRegistry, requester_keys: Any
) -> None:
    pool = ProcessHeCompute(1)
    try:
        # The nodes answer after 1 s, so the kill lands while the check holds the worker.
        service, _, _, auditor = _service(programs, nodes=FakeNodes(delay_s=1.0), compute=pool)
        killer = threading.Thread(target=_kill_workers_while_busy, args=(pool,))
        killer.start()
        with pytest.raises(ComputeUnavailable, match="worker process of the gateway stopped") as info:
            run(service, _request(mode="he", public_context=requester_keys.public_context))
        killer.join()
        assert info.value.http_status == 503 and "result" not in auditor.kinds()
        service.nodes = FakeNodes()
        outcome = run(service, _request(mode="he", public_context=requester_keys.public_context))
        assert _signs(requester_keys, outcome, len(SUBJECTS)) == oracle(programs.get("dibao"), SUBJECTS)
    finally:
        pool.close()


async def _loop_ticks_during(compute: Any, job_counts: list[int], context_data: bytes) -> tuple[int, float]:
    """Ticks of a 1 ms timer on the event loop while flood terms for `job_counts` are computed."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    await asyncio.gather(*(compute.floods(context_data, [n]) for n in job_counts))
    elapsed = time.perf_counter() - t0
    done.set()
    await task
    return ticks, elapsed


def test_the_event_loop_keeps_running_while_workers_compute(requester_keys: Any, compute: ProcessHeCompute) -> None:
    """Inline (threads), TenSEAL holds the GIL: the loop's 1 ms timer ticks far less often per
    second of HE work than when the same work runs in a worker process."""
    from exchange.he_compute import InlineHeCompute

    data = requester_keys.public_context
    asyncio.run(compute.floods(data, [1]))  # the worker exists and holds the context
    counts = [4096] * 12
    inline_ticks, inline_s = asyncio.run(_loop_ticks_during(InlineHeCompute(), counts, data))
    worker_ticks, worker_s = asyncio.run(_loop_ticks_during(compute, counts, data))
    inline_rate, worker_rate = inline_ticks / inline_s, worker_ticks / worker_s
    assert worker_rate > 2 * inline_rate, f"loop ticks per second: inline {inline_rate:.0f}, workers {worker_rate:.0f}"
