"""Tier views on the HE side: the overall view hides which criterion failed, exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.value_tags import tag_table
from exchange.eligibility import combine_he, combine_plain
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry

DIBAO = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("dibao")
KEY = b"\x07" * 32


def _pseudonyms(n: int) -> list[str]:
    return ["".join("abcdefghij"[int(ch)] for ch in f"{i:026d}") for i in range(n)]


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), epoch=st.integers(0, 1000))
def test_overall_view_keeps_verdict_and_fail_count_but_not_positions(requester_keys, public_context, seed, n, epoch):
    rng = np.random.default_rng(seed)
    values = {t.element: rng.integers(0, 900, n) for t in DIBAO.elements()}
    values["household.alive_resident"] = rng.integers(0, 2, n)
    values["tax.registered_businesses"] = rng.integers(0, 2, n)
    cts = {e: [public_context.load(public_context.encrypt(v.tolist()), n)] for e, v in values.items()}
    per_criterion = np.array([o.passes for o in combine_plain(DIBAO, values)])
    tags = tag_table(b"\x08" * 32, epoch, values, _pseudonyms(n))
    hidden = combine_he(DIBAO, _pseudonyms(n), public_context, cts, KEY, epoch, hide_order=True, tags=tags)
    assert [o.criterion for o in hidden] == ["position_1", "position_2", "position_3"]
    signs = np.array([requester_keys.decrypt_signs(o.ciphertexts[0], n) for o in hidden])
    assert np.array_equal(signs.all(axis=0), per_criterion.all(axis=0))
    assert np.array_equal((~signs).sum(axis=0), (~per_criterion).sum(axis=0))


def test_overall_view_order_is_stable_per_subject_and_epoch(requester_keys, public_context):
    from crypto.masks import derive_permutations

    ps = _pseudonyms(300)
    a = derive_permutations(KEY, "dibao", 1, ps, 3)
    assert np.array_equal(a, derive_permutations(KEY, "dibao", 1, ps, 3))
    assert not np.array_equal(a, derive_permutations(KEY, "dibao", 2, ps, 3))
    assert all(sorted(row) == [0, 1, 2] for row in a.tolist())
    # every position receives every criterion for some subjects: positions carry no meaning
    assert all(len(set(a[:, i])) == 3 for i in range(3))
