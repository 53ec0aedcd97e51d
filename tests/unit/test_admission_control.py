"""The admission limiter core and the node's cancellation point (issue 17 item 1)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from app.synth import write_mapping
from crypto.he import HE_PARAMS_ID, RequesterKeys
from gateway.admission_control import MB, AdmissionController, AdmissionSettings, ByteBudget
from nodes.loader import load_file
from nodes.service import NodeService
from nodes.store import NodeStore
from policies.catalogue import load_catalogue
from protos.xgate.v1 import node_pb2
from xgate.errors import Overloaded, RequestCancelled
from xgate.pseudonym import Pseudonymiser, id_checksum


def _settings(**change: object) -> AdmissionSettings:
    base: dict[str, object] = {
        "max_inflight_checks": 1,
        "max_queued_checks": 10,
        "max_queued_per_user": 10,
        "max_queued_per_agency": 10,
        "max_queue_wait_s": 600,  # these tests hold slots for as long as they like
    }
    return AdmissionSettings.model_validate(base | change)


async def _queue(ctl: AdmissionController, order: list[str], agency: str, user: str) -> None:
    await ctl.acquire(agency, user)
    order.append(f"{agency}/{user}")


def test_waiting_checks_are_served_round_robin_over_agencies_then_users() -> None:
    """Attack: one office floods the queue; without round robin the other office waits behind all of it."""

    async def scenario() -> list[str]:
        ctl = AdmissionController(_settings())
        await ctl.acquire("civil", "busy")  # holds the only slot
        order: list[str] = []
        tasks = [asyncio.create_task(_queue(ctl, order, "civil", "busy")) for _ in range(3)]
        tasks.append(asyncio.create_task(_queue(ctl, order, "civil", "quiet")))
        tasks.append(asyncio.create_task(_queue(ctl, order, "hrss", "other")))
        await asyncio.sleep(0)
        assert ctl.queued == 5
        for _ in range(5):
            ctl.release(0.1)
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(scenario())
    assert order == ["civil/busy", "hrss/other", "civil/quiet", "civil/busy", "civil/busy"]


def test_beyond_the_queue_is_an_immediate_overloaded_with_retry_after() -> None:
    async def scenario() -> None:
        ctl = AdmissionController(_settings(max_queued_checks=1))
        await ctl.acquire("a", "u1")
        waiting = asyncio.create_task(ctl.acquire("a", "u2"))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await ctl.acquire("a", "u3")
        assert info.value.http_status == 503 and info.value.details["retry_after_s"] >= 1
        ctl.release(0.5)
        await waiting
        assert (ctl.inflight, ctl.queued) == (1, 0)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"max_queued_per_user": 1}, "this user"),
        ({"max_queued_per_agency": 1}, "agency 'a'"),
        ({"max_queued_mb": 1}, "bytes"),
    ],
)
def test_fair_shares_and_bytes_bound_the_queue(change: dict[str, object], fragment: str) -> None:
    async def scenario() -> None:
        ctl = AdmissionController(_settings(**change))
        await ctl.acquire("a", "u1")
        first = asyncio.create_task(ctl.acquire("a", "u1", nbytes=600_000))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match=fragment):
            await ctl.acquire("a", "u1", nbytes=600_000)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert ctl.queued == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_its_place_and_a_granted_one_its_slot() -> None:
    async def scenario() -> None:
        ctl = AdmissionController(_settings())
        await ctl.acquire("a", "u1")
        gone = asyncio.create_task(ctl.acquire("a", "u2"))
        stays = asyncio.create_task(ctl.acquire("a", "u3"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert ctl.queued == 1
        ctl.release(0.1)
        await stays
        assert (ctl.inflight, ctl.queued) == (1, 0)
        # Granted, then cancelled before it ran: the slot is handed on, not leaked.
        late = asyncio.create_task(ctl.acquire("a", "u4"))
        await asyncio.sleep(0)
        ctl.release(0.1)  # grants `late`
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert ctl.inflight == 0
        async with ctl.slot("a", "u5"):
            assert ctl.inflight == 1
        assert ctl.inflight == 0

    asyncio.run(scenario())


def test_byte_budget_refuses_beyond_its_limit() -> None:
    budget = ByteBudget(MB)
    budget.take(MB - 10)
    with pytest.raises(Overloaded):
        budget.take(11)
    budget.give(MB - 10)
    budget.take(MB)


def test_settings_refuse_a_buffer_smaller_than_the_queue() -> None:
    with pytest.raises(ValueError, match="max_buffered_mb"):
        AdmissionSettings(max_queued_mb=64, max_buffered_mb=32)


def _node(tmp_path: Path) -> tuple[NodeService, Pseudonymiser, list[str]]:
    ps = Pseudonymiser(b"\x01" * 32)
    ids = [body + id_checksum(body) for body in (f"1101011980010100{i}" for i in range(3))]
    mapping = tmp_path / "tax.mapping.toml"
    write_mapping(mapping, "tax")
    data = tmp_path / "tax.csv"
    rows = "\n".join(f"{i},1000,900,0" for i in ids)
    data.write_text(f"national_id,monthly_income,monthly_wage_income,registered_businesses\n{rows}\n")
    store = NodeStore.open(tmp_path / "tax.sqlite")
    load_file(store, data, mapping, load_catalogue()[0], ps)
    return NodeService(agency="tax", store=store), ps, ids


def test_node_stops_encrypting_when_its_call_is_cancelled(tmp_path: Path) -> None:
    service, ps, ids = _node(tmp_path)
    keys = RequesterKeys.generate()
    request = node_pb2.EncryptRequest(
        context=node_pb2.RequestContext(
            request_id="r-1",
            requester_agency="civil_affairs",
            purpose="dibao",
            legal_basis="SAR-2014-art-12",
            case_id="c-1",
            program_id="dibao",
        ),
        mode=node_pb2.EXCHANGE_MODE_HE,
        pseudonyms=[ps.pseudonym(i) for i in ids],
        elements=[
            node_pb2.ElementQuery(element="tax.monthly_income"),
            node_pb2.ElementQuery(element="tax.registered_businesses"),
        ],
        public_context=keys.public_context,
        he_params_id=HE_PARAMS_ID,
    )
    polls: list[int] = []

    def cancelled_after_first_ciphertext() -> bool:
        polls.append(1)
        return len(polls) > 2  # before the work, before ciphertext 1, then: cancelled

    with pytest.raises(RequestCancelled):
        service.encrypt_values(request, cancelled_after_first_ciphertext)
    assert len(polls) == 3  # stopped before the second element's ciphertext
    answered = service.encrypt_values(request, lambda: False)
    assert [len(e.ciphertexts) for e in answered.elements] == [1, 1]


def test_a_check_that_would_outwait_its_deadline_is_refused_at_once() -> None:
    """Without this, a check queued behind too much work waits its whole deadline and then fails."""
    from gateway.admission_control import REQUEST_DEADLINE

    async def scenario() -> None:
        ctl = AdmissionController(_settings(), service_s=2.0)  # recent checks took 2 s each
        await ctl.acquire("a", "u1")
        loop = asyncio.get_running_loop()
        REQUEST_DEADLINE.set(loop.time() + 3.0)  # 2 s of waiting + 2 s of service > 3 s
        with pytest.raises(Overloaded, match="deadline"):
            await ctl.acquire("a", "u2")
        assert ctl.queued == 0
        REQUEST_DEADLINE.set(loop.time() + 10.0)  # room enough: it waits in the queue
        waiting = asyncio.create_task(ctl.acquire("a", "u3"))
        await asyncio.sleep(0)
        assert ctl.queued == 1
        ctl.release(2.0)
        await waiting

    asyncio.run(scenario())


def test_a_waiting_check_is_refused_after_max_queue_wait_and_leaves_the_queue() -> None:
    async def scenario() -> None:
        ctl = AdmissionController(_settings(max_queue_wait_s=0.05), service_s=0.001)
        await ctl.acquire("a", "holder")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Overloaded, match=r"no slot came free within 0\.05 s") as info:
            await ctl.acquire("a", "u")
        assert 0.04 < loop.time() - t0 < 1.0 and ctl.queued == 0 and ctl.inflight == 1
        assert info.value.details["retry_after_s"] >= 1
        ctl.release(0.001)
        await ctl.acquire("a", "u")  # the slot is free again: granted at once
        assert ctl.inflight == 1

    asyncio.run(scenario())


def test_retry_after_grows_while_refusals_outnumber_completions_and_falls_back_after() -> None:
    """Attack: 1,000 clients refused with Retry-After 1 come back every second, and answering the
    refusals costs more than the checks. Retry-After scales with refusals / (2 x completions)."""
    now = [0.0]
    ctl = AdmissionController(_settings(max_queued_checks=0), clock=lambda: now[0], service_s=0.5, jitter=lambda: 1.0)

    def window(refusals: int, served: int) -> float:
        for _ in range(refusals):
            with pytest.raises(Overloaded):
                ctl.refuse_early(10.0)  # every slot busy and no queue: refused
        for _ in range(served):
            ctl._inflight += 1  # a check that was admitted and now completes
            ctl.release(0.5)
        now[0] += 5.0
        return ctl.contention_retry_s

    ctl._inflight = ctl.settings.max_inflight_checks  # every slot busy: refusals from here
    window(1, 0)  # opens the first window
    # A window's counts apply at the first event after it closes, so each figure lags one window.
    grown = [window(400, 10) for _ in range(5)]
    assert grown == [1.0, 4.0, 16.0, 60.0, 60.0]  # x min(4, 400 / 20) per window, capped at 60 s
    assert ctl.retry_after_s() == 60.0
    fallen = [window(0, 10) for _ in range(5)]
    assert fallen[-1] == 1.0 and fallen == sorted(fallen, reverse=True)


def test_a_burst_is_cut_after_the_body_before_any_other_work() -> None:
    """Attack: 1,000 requests arriving at once all pass the early gate (no slot is taken yet), so
    each was authenticated and routed before the queue could refuse it: refusals took seconds.
    Past their bodies, no more than twice the slots and queue places get in; the rest are refused
    at once, and each one leaving lets another in."""
    ctl = AdmissionController(_settings(max_inflight_checks=2, max_queued_checks=3))
    assert ctl.entry_bound() == 10
    for _ in range(10):
        ctl.enter(10.0)
    with pytest.raises(Overloaded) as info:
        ctl.enter(10.0)
    assert "more arriving" in info.value.message and info.value.details["retry_after_s"] >= 1
    assert ctl.entered == 10  # a refused request is not counted in
    ctl.leave()
    ctl.enter(10.0)
    assert ctl.entered == 10


def test_a_refused_herd_is_told_to_come_back_spread_over_the_time_to_serve_it() -> None:
    """Attack: 1,000 clients refused at once, each told "retry in a second or two", came back
    together and were refused together again: the refusals cost more CPU than the checks. Each is
    now told a uniform share of the time it takes to serve the herd once, so no second sees more
    returning than a few times what the gateway serves."""
    import random

    draw = random.Random(3)
    ctl = AdmissionController(
        _settings(max_inflight_checks=8, max_queued_checks=0), service_s=1.0, jitter=lambda: 1.0, spread=draw.random
    )
    ctl._inflight = 8  # every slot busy
    told = []
    for _ in range(960):
        with pytest.raises(Overloaded) as info:
            ctl.refuse_early(10.0)
        told.append(int(info.value.details["retry_after_s"]))
    per_second = Counter(told)
    assert max(told) == 60 and min(told) >= 1
    assert max(per_second.values()) <= 60, sorted(per_second.items())[:5]  # 960 in one second without the spread
