"""Result ciphertexts leave the gateway one modulus level down: smaller, still exact.

Measured with the secret key: a fresh node ciphertext has three 60-bit primes (393 kB); a masked,
flooded result switched to two primes is a third smaller and decrypts exactly; the gateway
refuses a switched ciphertext as a node's input (the masking product needs the whole budget).
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from crypto.he import RESULT_LEVELS_DROPPED, PublicContext, RequesterKeys
from xgate.errors import CryptoError


def _levels(keys: RequesterKeys, blob: bytes) -> int:
    (part,) = ts.bfv_vector_from(keys._ctx, blob).ciphertext()
    return int(part.coeff_modulus_size())


def test_results_are_switched_down_one_level_and_smaller(requester_keys: RequesterKeys, public_context: PublicContext):
    fresh = public_context.encrypt([7])
    term = public_context.load(fresh, 1)
    result = public_context.mask_criterion([term], 1, 7, np.array([12345]), np.array([3]))
    assert _levels(requester_keys, fresh) == 3
    assert _levels(requester_keys, result) == 3 - RESULT_LEVELS_DROPPED == 2
    assert len(result) < 0.7 * len(fresh)


@pytest.mark.parametrize(("value", "sign"), [(6, False), (7, True), (8, True)])
def test_switched_results_decide_exactly_at_the_boundary(
    requester_keys: RequesterKeys, public_context: PublicContext, value: int, sign: bool
):
    term = public_context.load(public_context.encrypt([value]), 1)
    r, s = np.array([2**40 + 3]), np.array([2**40 + 2])
    result = public_context.mask_criterion([term], 1, 7, r, s)
    assert requester_keys.decrypt_masked(result, 1).tolist() == [int(r[0]) * (value - 7) + int(s[0])]
    assert requester_keys.decrypt_signs(result, 1).tolist() == [sign]
    decryptor = sealapi.Decryptor(requester_keys._ctx.seal_context().data, requester_keys._ctx.secret_key().data)
    (part,) = ts.bfv_vector_from(requester_keys._ctx, result).ciphertext()
    assert decryptor.invariant_noise_budget(part) >= 5


def test_gateway_refuses_a_switched_ciphertext_as_node_input(public_context: PublicContext):
    term = public_context.load(public_context.encrypt([1]), 1)
    result = public_context.mask_criterion([term], 1, 0, np.array([5]), np.array([1]))
    with pytest.raises(CryptoError, match="top modulus level"):
        public_context.load(result, 1)
