"""What binding a sign-only comparison to the requester's decryption would take, in BFV noise and bytes.

The secure comparison `bench/sign_comparison.py` measures is steerable: the requester feeds it a
value it decrypted itself, so a modified client shifts it (`threshold_shift_attack`). The input can
be bound without a cross-scheme proof if the comparison runs under the requester's own BFV key: the
requester sends its blinded value's bits encrypted, and the gateway, which holds the value's
ciphertext, checks homomorphically that they are bits and that they add up to it, folding the
check into a randomised output (a wrong input then yields garbage). The bit check is one
ciphertext-by-ciphertext multiplication; the randomisation one product with a random plaintext;
then comes the noise flood every result gets (docs/PROTOCOL.md, "Masks"), which needs the result
to keep what the flood term leaves plus a ~2^40 statistical margin.

This measures, with the secret key (SEAL's invariant noise budget), whether that chain leaves room
for the flood at today's parameters (N = 8192, 218-bit modulus, t a 58-bit batching prime) and at
the next size (N = 16384, 438 bits), with the sizes and times it would cost:

    python -m bench.sign_binding      # writes bench/results/sign_binding.json
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from pathlib import Path
from typing import Any

import tenseal as ts
import tenseal.sealapi as sealapi

from crypto.he import PublicContext, RequesterKeys

RESULTS = Path(__file__).parent / "results" / "sign_binding.json"
PARAMETERS = {8192: [60, 60, 60, 38], 16384: [60, 60, 60, 60, 60, 60, 60, 18]}
PLAIN_BITS = 58
TODAY_CHECK_BYTES = 358_425  # one 低保 check with pads, docs/BENCHMARKS.md (bench/load.py --single)


def _is_prime(n: int) -> bool:
    """Miller-Rabin with the first 12 prime bases: deterministic below 3.3e24."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2 or any(n % p == 0 for p in bases if n != p):
        return n in bases
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def batching_prime(n: int, bits: int) -> int:
    """The largest prime below 2^bits that is 1 mod 2n (so the plaintext ring batches into n slots)."""
    k = (2**bits - 1) // (2 * n)
    while not _is_prime(k * 2 * n + 1):
        k -= 1
    return k * 2 * n + 1


def _budget(ctx: ts.Context, vector: ts.BFVVector) -> int:
    decryptor = sealapi.Decryptor(ctx.seal_context().data, ctx.secret_key().data)
    return min(int(decryptor.invariant_noise_budget(c)) for c in vector.ciphertext())


# The flood's noise must exceed what it hides by ~2^40 (crypto.he: ~2^43 measured today), and still
# leave the decryption some budget: a result needs this much budget before it is flooded.
FLOOD_MARGIN_BITS = 40


def flood_leaves() -> int:
    """The noise budget today's flood term leaves a fresh ciphertext (crypto.he): it sets the noise."""
    keys = RequesterKeys.generate()
    public = PublicContext(keys.public_context)
    fresh = ts.bfv_vector(keys._ctx, [0] * 8192)
    return _budget(keys._ctx, fresh + ts.bfv_vector_from(keys._ctx, public.flood_bytes(8192)))


def chain(n: int, coeffs: list[int], needed: int) -> dict[str, Any]:
    t = batching_prime(n, PLAIN_BITS)
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=n, plain_modulus=t, coeff_mod_bit_sizes=coeffs)
    bare = len(ctx.serialize(save_public_key=False, save_secret_key=False, save_relin_keys=False))
    public = len(ctx.serialize(save_public_key=True, save_secret_key=False, save_relin_keys=False)) - bare
    ctx.generate_relin_keys()
    relin = len(ctx.serialize(save_public_key=False, save_secret_key=False, save_relin_keys=True)) - bare

    def random_plaintext() -> list[int]:
        return [secrets.randbelow(t) - t // 2 for _ in range(n)]

    bits = ts.bfv_vector(ctx, [secrets.randbelow(2) for _ in range(n)])
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        squared = bits * bits  # relinearised: the booleanity check x(x - 1) costs this product
        times.append(time.perf_counter() - t0)
    fresh = _budget(ctx, bits)
    after_product = _budget(ctx, squared)
    after_randomising = _budget(ctx, squared * random_plaintext())
    return {
        "poly_modulus_degree": n,
        "coeff_modulus_bits": sum(coeffs),
        "plain_modulus_bits": t.bit_length(),
        "fresh_budget_bits": fresh,
        "after_ct_ct_product_bits": after_product,
        "after_random_plaintext_bits": after_randomising,
        "needed_before_flood_bits": needed,
        "fits": after_randomising >= needed,
        "fresh_ciphertext_bytes": len(bits.serialize()),
        "public_key_bytes": public,
        "relin_keys_bytes": relin,
        "ct_ct_product_ms": 1000 * statistics.median(times),
    }


def main() -> None:
    leaves = flood_leaves()
    rows = [chain(n, coeffs, leaves + FLOOD_MARGIN_BITS) for n, coeffs in PARAMETERS.items()]
    bigger = rows[-1]
    out = {
        "flood_term_leaves_bits": leaves,
        "flood_margin_bits": FLOOD_MARGIN_BITS,
        "chains": rows,
        "today_check_bytes": TODAY_CHECK_BYTES,
        # the least a bound comparison adds per check: the requester's bits out, the result back
        "bound_check_extra_bytes_at_least": 2 * bigger["fresh_ciphertext_bytes"],
        "note": (
            "budgets measured with the secret key; the bound comparison's full circuit (prefix sums over "
            "the bits, the consistency check, rotations) is not built, so these are lower bounds on its cost"
        ),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print({k: r[k] for k in ("poly_modulus_degree", "fresh_budget_bits", "after_ct_ct_product_bits",
                                 "after_random_plaintext_bits", "needed_before_flood_bits", "fits")})  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
