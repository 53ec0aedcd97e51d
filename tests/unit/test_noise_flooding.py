"""Noise flooding, measured with the requester's secret key.

Without flooding, a result ciphertext's noise depends on the masks: the noise of Enc(S)*r grows
with the mask plaintext, so the secret-key holder can tell a result masked with r = 1 from one
masked with large random r by its remaining noise budget alone. With flooding, the noise budget
(SEAL's invariant_noise_budget, i.e. log2 of how far the noise is from breaking decryption) is the
same whatever the inputs and masks, and decryption stays exact.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from crypto.he import SLOTS, PublicContext, RequesterKeys

N = SLOTS  # all slots: r = 1 everywhere is then the constant plaintext 1


def _budget(keys: RequesterKeys, blob: bytes) -> int:
    ctx = keys._ctx
    decryptor = sealapi.Decryptor(ctx.seal_context().data, ctx.secret_key().data)
    (part,) = ts.bfv_vector_from(ctx, blob).ciphertext()
    return int(decryptor.invariant_noise_budget(part))


def _masked(ctx: PublicContext, values: np.ndarray, r: np.ndarray, flood: bool) -> bytes:
    term = ctx.load(ctx.encrypt(values.tolist()), len(values))
    # "at least 1100" (direction +1): with r = 1 in every slot the mask is the constant plaintext 1
    return ctx.mask_criterion([term], 1, 1100, r, np.zeros(len(values), dtype=np.int64), flood=flood)


def _two_inputs(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    small = (np.zeros(N, dtype=np.int64), np.ones(N, dtype=np.int64))  # S = 0, r = 1 everywhere
    large = (rng.integers(0, 2**21, N), rng.integers(2**30, 2**35, N))  # large sums, large random r
    return small, large


def test_without_flooding_the_noise_tells_the_masks_apart(requester_keys, public_context):
    """The attack the flood stops: the secret-key holder reads r's size off the noise budget.

    Results leave one modulus level down (PublicContext.switched), which caps the budget of a
    result masked with r = 1 at ~54 bits: the gap to a large-r result shrinks from ~50 bits to ~3,
    but it is the same in every sample, so it still tells the masks apart without the flood."""
    small, large = _two_inputs(1)
    a = [_budget(requester_keys, _masked(public_context, *small, flood=False)) for _ in range(4)]
    b = [_budget(requester_keys, _masked(public_context, *large, flood=False)) for _ in range(4)]
    assert min(a) - max(b) >= 2


def test_with_flooding_the_noise_budget_does_not_depend_on_inputs_or_masks(requester_keys, public_context):
    small, large = _two_inputs(2)
    a, b = [], []
    for _ in range(6):
        blob_a = _masked(public_context, *small, flood=True)
        blob_b = _masked(public_context, *large, flood=True)
        a.append(_budget(requester_keys, blob_a))
        b.append(_budget(requester_keys, blob_b))
        # exact: flooding adds an encryption of zero
        assert requester_keys.decrypt_masked(blob_a, N).tolist() == (small[0] - 1100).tolist()
        want = large[1] * (large[0] - 1100)
        assert requester_keys.decrypt_masked(blob_b, N).tolist() == want.tolist()
    assert max(a + b) - min(a + b) <= 1, (a, b)
    assert min(a + b) >= 5  # room left: decryption never fails


def test_flood_term_is_zero_with_large_noise_and_fresh_each_time(requester_keys, public_context):
    first, second = public_context.flood(10), public_context.flood(10)
    assert first.size() == 10
    assert first.decrypt(requester_keys._ctx.secret_key()) == [0] * 10
    assert first.serialize() != second.serialize()
    fresh = ts.bfv_vector(requester_keys._ctx, [0] * 10)
    fresh_budget = _budget(requester_keys, bytes(fresh.serialize()))
    assert fresh_budget - _budget(requester_keys, bytes(first.serialize())) >= 90


def test_flood_refuses_bad_slot_counts(public_context):
    import pytest

    from xgate.errors import CryptoError

    for count in (0, SLOTS + 1):
        with pytest.raises(CryptoError, match="slots"):
            public_context.flood(count)


def test_overall_view_results_are_flooded_too(requester_keys, public_context):
    from crypto.value_tags import tag_table
    from exchange.eligibility import combine_he
    from policies.catalogue import load_catalogue
    from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry

    dibao = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("dibao")
    n = 8
    ps = ["".join("abcdefghij"[int(c)] for c in f"{i:026d}") for i in range(n)]
    cts = {t.element: [public_context.load(public_context.encrypt([0] * n), n)] for t in dibao.elements()}
    tags = tag_table(b"\x02" * 32, 5, {t.element: [0] * n for t in dibao.elements()}, ps)
    for view in (False, True):
        for outcome in combine_he(dibao, ps, public_context, cts, b"\x01" * 32, 5, hide_order=view, tags=tags):
            assert 5 <= _budget(requester_keys, outcome.ciphertexts[0]) <= 12
