"""One-time pads for small packed checks: the pads (crypto/pads.py), the node's book of answered
slots (nodes/pads.py), the gateway's batches (exchange/pads.py) and the padded combination.

Measured with the requester's secret key: a padded check decrypts to exactly the masked values
a check with fresh node ciphertexts gives (same masks, epoch and hidden order, the threshold ±1
included), from any window of the batch; every slot outside its blocks decrypts to 0.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from crypto.he import PLAIN_MODULUS, SLOTS, PublicContext, RequesterKeys, centered
from crypto.pads import SEED_BYTES, new_batch_id, new_seed, padded, pads
from crypto.value_tags import tag_table
from exchange.eligibility import combine_he_packed
from exchange.pads import PadBatchAbandoned, PadPools
from nodes.pads import PadBook
from tests.unit.test_packing import DIBAO, KEY, TAG_KEY, _encrypt, _pseudonyms, _values
from xgate.errors import CryptoError, InvalidInput, PadUnknown

CTX = "sha256:" + "ab" * 32


# --- the pads ---------------------------------------------------------------------------------


def test_pads_repeat_per_seed_and_element_and_differ_otherwise() -> None:
    seed = new_seed()
    one = pads(seed, "tax.monthly_income")
    assert one.shape == (SLOTS,) and one.dtype == np.uint64
    assert np.array_equal(one, pads(seed, "tax.monthly_income"))
    assert not np.array_equal(one, pads(seed, "tax.registered_businesses"))
    assert not np.array_equal(one, pads(new_seed(), "tax.monthly_income"))
    with pytest.raises(CryptoError, match=f"{SEED_BYTES} bytes"):
        pads(b"short", "tax.monthly_income")


def test_pads_cover_the_plaintext_ring_evenly() -> None:
    """Uniform on [0, t): each of 16 equal ranges holds 1/16 of 81,920 draws, within 5 sigma."""
    draws = np.concatenate([pads(new_seed(), "e") for _ in range(10)])
    assert int(draws.max()) < PLAIN_MODULUS
    counts = np.bincount((draws // np.uint64(PLAIN_MODULUS // 16 + 1)).astype(np.int64), minlength=16)
    expected = len(draws) / 16
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts


def test_a_padded_value_plus_its_pad_is_the_value_mod_t() -> None:
    pad = pads(new_seed(), "e")[:5]
    values = [0, 1, 1100, 2**24, 7]
    y = padded(values, pad)
    assert all(-PLAIN_MODULUS // 2 <= v <= PLAIN_MODULUS // 2 for v in y)
    assert [(v + int(p)) % PLAIN_MODULUS for v, p in zip(y, pad.tolist(), strict=True)] == values
    with pytest.raises(CryptoError, match="disagree"):
        padded(values, pad[:4])


# --- the node's book --------------------------------------------------------------------------


def test_a_node_answers_each_slot_of_a_batch_once() -> None:
    book, batch = PadBook(), new_batch_id()
    first = book.take(batch, CTX, ["a", "b"], 0, 3, open_=True)
    assert first.start == 0 and first.count == 3
    book.take(batch, CTX, ["a", "b"], 3, 3, open_=False)
    with pytest.raises(InvalidInput, match="each pad slot is used once"):
        book.take(batch, CTX, ["a"], 2, 2, open_=False)
    with pytest.raises(InvalidInput, match="each pad slot is used once"):
        book.take(batch, CTX, ["b"], 0, 1, open_=False)
    # Nothing is claimed unless every slot is free: "c" at [5, 7) was not taken by the refusal.
    with pytest.raises(InvalidInput, match="used once"):
        book.take(batch, CTX, ["c", "a"], 5, 2, open_=False)
    book.take(batch, CTX, ["c"], 5, 2, open_=False)


def test_a_node_refuses_a_batch_it_did_not_open_another_context_or_a_second_opening() -> None:
    book, batch = PadBook(), new_batch_id()
    with pytest.raises(PadUnknown, match="open a new one"):
        book.take(batch, CTX, ["a"], 0, 1, open_=False)
    book.take(batch, CTX, ["a"], 0, 1, open_=True)
    with pytest.raises(InvalidInput, match="another HE context"):
        book.take(batch, "sha256:" + "cd" * 32, ["a"], 1, 1, open_=False)
    with pytest.raises(InvalidInput, match="opened once"):
        book.take(batch, CTX, ["a"], 1, 1, open_=True)
    # A restarted node (a new book) knows no batch: it cannot be made to draw an old batch's pads.
    with pytest.raises(PadUnknown):
        PadBook().take(batch, CTX, ["a"], 1, 1, open_=False)


@pytest.mark.parametrize(("start", "count"), [(-1, 1), (SLOTS - 1, 2), (0, 0)])
def test_a_node_refuses_windows_outside_the_slots(start: int, count: int) -> None:
    with pytest.raises(InvalidInput, match="outside the"):
        PadBook().take(new_batch_id(), CTX, ["a"], start, count, open_=True)


def test_a_node_refuses_a_malformed_batch_id_and_forgets_the_oldest_batch_first() -> None:
    with pytest.raises(InvalidInput, match="16 bytes"):
        PadBook().take(b"x", CTX, ["a"], 0, 1, open_=True)
    book = PadBook(max_batches=2)
    old, mid, new = new_batch_id(), new_batch_id(), new_batch_id()
    for batch in (old, mid, new):
        book.take(batch, CTX, ["a"], 0, 1, open_=True)
    assert len(book) == 2
    with pytest.raises(PadUnknown):
        book.take(old, CTX, ["a"], 1, 1, open_=False)
    book.take(new, CTX, ["a"], 1, 1, open_=False)


# --- the gateway's batches --------------------------------------------------------------------

KEY_A = (CTX, "dibao", "2026.1", "ca-caseworker")


def test_windows_of_one_batch_never_overlap_and_start_on_a_block() -> None:
    async def scenario() -> None:
        pools = PadPools()
        opener = await pools.lease(KEY_A, 1, 3)
        assert opener.opens and opener.offset == 0 and opener.pads is None
        pools.opened(opener, {"e": b"pad"})
        taken = [(0, 3)]
        for n in (1, 4, 2, 5, 1):
            lease = await pools.lease(KEY_A, n, 3 * n)
            assert not lease.opens and lease.batch == opener.batch and lease.pads == {"e": b"pad"}
            assert lease.offset % n == 0
            assert all(lease.offset >= end or lease.offset + 3 * n <= start for start, end in taken)
            taken.append((lease.offset, lease.offset + 3 * n))

    asyncio.run(scenario())


def test_a_full_batch_is_followed_by_a_new_one() -> None:
    async def scenario() -> None:
        pools = PadPools()
        first = await pools.lease(KEY_A, 1000, 3000)
        pools.opened(first, {})
        second = await pools.lease(KEY_A, 1000, 3000)
        assert not second.opens and second.offset == 3000
        third = await pools.lease(KEY_A, 1000, 3000)  # 6000 + 3000 > 8192
        assert third.opens and third.offset == 0 and third.batch != first.batch

    asyncio.run(scenario())


def test_a_batch_serves_a_bounded_number_of_checks() -> None:
    async def scenario() -> None:
        pools = PadPools(max_windows=3)
        first = await pools.lease(KEY_A, 1, 3)
        pools.opened(first, {})
        offsets = [(await pools.lease(KEY_A, 1, 3)).offset for _ in range(2)]
        assert offsets == [3, 6]
        fourth = await pools.lease(KEY_A, 1, 3)
        assert fourth.opens and fourth.batch != first.batch

    asyncio.run(scenario())


def test_the_node_book_keeps_one_bit_per_answered_slot() -> None:
    book, batch = PadBook(), new_batch_id()
    book.take(batch, CTX, ["a", "b"], 3, 5, open_=True)
    marks = book._batches[batch].used
    assert marks == {"a": 0b11111000, "b": 0b11111000}  # slots 3..7, one bit each: at most 1 kB per element


def test_checks_arriving_while_a_batch_opens_wait_for_its_pads_and_retry_if_it_fails() -> None:
    async def scenario() -> None:
        pools = PadPools()
        opener = await pools.lease(KEY_A, 1, 3)
        waiter = asyncio.ensure_future(pools.lease(KEY_A, 1, 3))
        await asyncio.sleep(0)
        assert not waiter.done()  # a node answers windows of a batch only once it has opened it
        pools.discard(opener)  # the opening failed (a node was down)
        retried = await waiter
        assert retried.opens and retried.batch != opener.batch
        late = asyncio.ensure_future(pools.lease(KEY_A, 1, 3))
        await asyncio.sleep(0)
        pools.opened(retried, {"e": b"p"})
        assert (await late).pads == {"e": b"p"} and (await late).offset == 3

    asyncio.run(scenario())


def test_the_pools_are_bounded_and_a_forgotten_batch_releases_its_waiters() -> None:
    async def scenario() -> None:
        pools = PadPools(max_pools=1)
        opener = await pools.lease(KEY_A, 1, 3)
        waiter = asyncio.ensure_future(pools.lease(KEY_A, 1, 3))
        await asyncio.sleep(0)
        await pools.lease((CTX, "pension_survival", "1", "ca-caseworker"), 1, 2)  # evicts KEY_A's batch
        assert len(pools) == 1
        assert isinstance(opener._pool.ready.exception(), PadBatchAbandoned)  # the evicted batch let go
        retried = await waiter
        assert retried.opens and retried.batch != opener.batch
        with pytest.raises(ValueError, match="whole slot blocks"):
            await pools.lease(KEY_A, 2, 3)

    asyncio.run(scenario())


# --- the padded combination -------------------------------------------------------------------


@pytest.mark.parametrize(("hide_order", "first_block"), [(False, 0), (False, 7), (True, 3), (True, 1362)])
def test_a_padded_check_decrypts_to_the_masked_values_of_fresh_ciphertexts(
    requester_keys: RequesterKeys, public_context: PublicContext, hide_order: bool, first_block: int
) -> None:
    n, k = 6, len(DIBAO.criteria)
    ps, values = _pseudonyms(n), _values(n)
    tags = tag_table(TAG_KEY, 3, values, ps)
    _, shared = combine_he_packed(
        DIBAO, ps, public_context, _encrypt(public_context, values, k), KEY, 3, hide_order, tags=tags
    )
    seed, start, total = new_seed(), first_block * n, (first_block + k) * n
    pad_ciphertexts = {e: public_context.encrypt(centered(pads(seed, e))) for e in values}
    loaded = {e: [public_context.load_pad(blob, total)] for e, blob in pad_ciphertexts.items()}
    answers = {
        e: np.asarray(padded(v.tolist() * k, pads(seed, e)[start : start + n * k]), dtype=object)
        for e, v in values.items()
    }
    outcomes, result = combine_he_packed(
        DIBAO, ps, public_context, loaded, KEY, 3, hide_order, padded=answers, first_block=first_block, tags=tags
    )
    assert [o.block for o in outcomes] == [first_block + b for b in range(k)]
    expected = requester_keys.decrypt_masked(shared, n * k)
    got = requester_keys.decrypt_masked(result, total)
    assert got[start:].tolist() == expected.tolist()
    assert not got[:start].any()  # the slots before the check's blocks hold nothing


def test_a_padded_result_holds_nothing_but_its_own_blocks_in_any_slot(
    requester_keys: RequesterKeys, public_context: PublicContext
) -> None:
    """A modified client decrypting all N slots (not only those its answer names) reads zeros
    outside its blocks: neither pads nor another check's values."""
    from crypto.he import _relabelled

    n, k = 2, len(DIBAO.criteria)
    ps, values = _pseudonyms(n), _values(n)
    seed, first_block = new_seed(), 10
    total = (first_block + k) * n
    loaded = {e: [public_context.load_pad(public_context.encrypt(centered(pads(seed, e))), total)] for e in values}
    answers = {
        e: np.asarray(padded(v.tolist() * k, pads(seed, e)[first_block * n : total]), dtype=object)
        for e, v in values.items()
    }
    tags = tag_table(TAG_KEY, 3, values, ps)
    _, result = combine_he_packed(
        DIBAO, ps, public_context, loaded, KEY, 3, padded=answers, first_block=first_block, tags=tags
    )
    every_slot = requester_keys.decrypt_masked(_relabelled(result, SLOTS), SLOTS)
    assert every_slot[first_block * n : total].any()
    assert not every_slot[: first_block * n].any() and not every_slot[total:].any()


def test_only_a_padded_check_may_start_past_the_first_block(public_context: PublicContext) -> None:
    n, k = 2, len(DIBAO.criteria)
    ps, values = _pseudonyms(n), _values(n)
    with pytest.raises(ValueError, match="one-time-padded"):
        cts = _encrypt(public_context, values, k)
        combine_he_packed(DIBAO, ps, public_context, cts, KEY, 3, first_block=1, tags=tag_table(TAG_KEY, 3, values, ps))


def test_a_pad_must_be_a_fresh_top_level_ciphertext_of_every_slot(public_context: PublicContext) -> None:
    with pytest.raises(CryptoError, match="expected 8192"):
        public_context.load_pad(public_context.encrypt([1, 2, 3]), 3)
    with pytest.raises(CryptoError, match=r"1\.\.8192"):
        public_context.load_pad(public_context.encrypt([0] * SLOTS), 0)
