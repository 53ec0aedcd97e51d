"""Attack (issue 13, item 3 in part): one person's verdicts out of a bronze cohort of made-up people.

The victim plus 9 made-up (valid-format) pseudonyms: unknown people got the program's default
values, so every fake slot was predictable and the victim's slot the odd one out. Cohort members
must now be registered people: the register node (the household register, `civil_register`)
refuses a bronze request naming anyone it does not know, without saying whom. The two-cohort
differencing attack is bounded by randomized response instead (test_two_cohort_differencing.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bench.privacy import _bronze_request, _random_pseudonym, _register_node, fake_member_attack
from xgate.errors import PolicyDenied

TRIALS = 400


def test_fake_member_attack_fails_against_the_register_node() -> None:
    measured = fake_member_attack(TRIALS, civil_register=True)
    assert measured["answered"] == 0 and measured["success_rate"] == 0.0


def test_positive_control_without_the_member_check_the_attack_always_works() -> None:
    measured = fake_member_attack(TRIALS, civil_register=False)
    assert measured["answered"] == TRIALS and measured["success_rate"] == 1.0
    assert measured["success_rate"] > measured["majority_guess_baseline"] + 0.05  # it learns, not guesses


def test_the_refusal_does_not_say_which_member_is_unknown() -> None:
    import numpy as np

    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory() as tmp:
        node, registered, _ = _register_node(20, True, 7, Path(tmp))
        fake = _random_pseudonym(rng)
        with pytest.raises(PolicyDenied) as info:
            node.encrypt_values(_bronze_request([*registered[:9], fake], "r-1"))
        assert fake not in info.value.message and "not every member" in info.value.message
        assert not any(p in info.value.message for p in registered)
        # registered members only: answered; gold requests are not membership-checked
        assert len(node.encrypt_values(_bronze_request(registered[:10], "r-2")).elements) == 1
        gold = _bronze_request([*registered[:9], fake], "r-3")
        gold.context.requester_tier = "gold"
        assert len(node.encrypt_values(gold).elements[0].plain_values) == 10
        node.store.close()
