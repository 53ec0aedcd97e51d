"""Small batches: every criterion's result in one ciphertext (exchange/eligibility.combine_he_packed).

The nodes repeat each subject's values once per criterion (`EncryptRequest.replicas`); the
gateway masks block b with criterion b's masks. Measured with the secret key: the packed result
decrypts to exactly the masked values combine_he gives criterion by criterion (same masks, same
epoch, same hidden order), ±1 around each threshold included, in one ciphertext instead of k.
"""

from __future__ import annotations

import numpy as np
import pytest

from crypto.he import SLOTS, PublicContext, RequesterKeys
from crypto.value_tags import tag_table
from exchange.eligibility import combine_he, combine_he_packed, flood_counts, packing
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry

DIBAO = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("dibao")
KEY = b"\x05" * 32
TAG_KEY = b"\x06" * 32  # a node's value-tag key


def _pseudonyms(n: int) -> list[str]:
    return ["".join("abcdefghij"[int(ch)] for ch in f"{i:026d}") for i in range(n)]


def _values(n: int) -> dict[str, np.ndarray]:
    """Income sums at 1,099 / 1,100 / 1,101 (the threshold ±1) and both flags both ways."""
    income = np.array([1099, 1100, 1101, 0, 500, 1101][:n] + [7] * max(0, n - 6))
    return {
        "tax.monthly_income": income,
        "hrss.monthly_pension": np.zeros(n, dtype=np.int64),
        "civil_affairs.monthly_benefits": np.zeros(n, dtype=np.int64),
        "household.alive_resident": np.arange(n) % 2,
        "tax.registered_businesses": (np.arange(n) // 2) % 2,
    }


def _encrypt(ctx: PublicContext, values: dict[str, np.ndarray], copies: int) -> dict[str, list]:  # type: ignore[type-arg]
    n = len(next(iter(values.values())))
    return {e: [ctx.load(ctx.encrypt(v.tolist() * copies), n * copies)] for e, v in values.items()}


@pytest.mark.parametrize("hide_order", [False, True])
def test_packed_results_equal_the_per_criterion_ones_slot_for_slot(
    requester_keys: RequesterKeys, public_context: PublicContext, hide_order: bool
) -> None:
    n, k = 6, len(DIBAO.criteria)
    ps, values = _pseudonyms(n), _values(n)
    tags = tag_table(TAG_KEY, 3, values, ps)
    single = combine_he(DIBAO, ps, public_context, _encrypt(public_context, values, 1), KEY, 3, hide_order, tags=tags)
    outcomes, packed = combine_he_packed(
        DIBAO, ps, public_context, _encrypt(public_context, values, k), KEY, 3, hide_order, tags=tags
    )
    assert [o.criterion for o in outcomes] == [o.criterion for o in single]
    assert [o.block for o in outcomes] == list(range(k)) and all(not o.ciphertexts for o in outcomes)
    shared = requester_keys.decrypt_masked(packed, n * k)
    for b, one in enumerate(single):
        assert shared[b * n : (b + 1) * n].tolist() == requester_keys.decrypt_masked(one.ciphertexts[0], n).tolist()
    signs = requester_keys.decrypt_signs(packed, n * k)
    if not hide_order:  # income at 1,099 and 1,100 passes "at most 1,100", 1,101 does not
        assert signs[:3].tolist() == [True, True, False]
    assert len(packed) == len(single[0].ciphertexts[0])  # one ciphertext where there were k


def test_packing_applies_only_while_every_block_fits_one_ciphertext() -> None:
    k = len(DIBAO.criteria)
    assert packing(DIBAO, 1) == k and packing(DIBAO, SLOTS // k) == k
    assert packing(DIBAO, SLOTS // k + 1) == 0
    assert flood_counts(DIBAO, 2, packed=True) == [2 * k] and flood_counts(DIBAO, 2) == [2] * k


def test_a_batch_too_large_to_pack_is_refused_by_the_packed_combination(public_context: PublicContext) -> None:
    n = SLOTS // len(DIBAO.criteria) + 1
    with pytest.raises(ValueError, match="does not pack"):
        combine_he_packed(DIBAO, _pseudonyms(n), public_context, {}, KEY, 1, tags={})


def _packed_body(packed: bytes, names: list[str], n: int, blocks: list[int]) -> dict[str, object]:
    import base64

    criteria = [
        {"criterion": c, "description": "", "ciphertexts": [], "block": b} for c, b in zip(names, blocks, strict=True)
    ]
    return {
        "request_id": "r", "program": "dibao", "program_version": "1", "view": "per_criterion", "subjects": n,
        "chunk_size": SLOTS, "packed_ciphertexts": [base64.b64encode(packed).decode()], "criteria": criteria,
    }  # fmt: skip


def test_the_sdk_reads_each_criterion_from_its_block(requester_keys: RequesterKeys, public_context: PublicContext):
    from client.sdk import GatewayClient

    n, k = 6, len(DIBAO.criteria)
    ps, values = _pseudonyms(n), _values(n)
    cts, tags = _encrypt(public_context, values, k), tag_table(TAG_KEY, 3, values, ps)
    outcomes, packed = combine_he_packed(DIBAO, ps, public_context, cts, KEY, 3, tags=tags)
    names = [o.criterion for o in outcomes]
    with GatewayClient("https://gw.test", "key", keys=requester_keys) as client:
        result = client._decode(_packed_body(packed, names, n, list(range(k))), [str(i) for i in range(n)], 0)
        signs = requester_keys.decrypt_signs(packed, n * k)
        for b, name in enumerate(names):
            assert result.passes[name].tolist() == signs[b * n : (b + 1) * n].tolist()
        from xgate.errors import CryptoError

        with pytest.raises(CryptoError, match="slot block 7"):
            client._decode(_packed_body(packed, names, n, [0, 1, 7]), [str(i) for i in range(n)], 0)
