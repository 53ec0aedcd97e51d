"""Attack (issue 13, item 5): tell which criterion failed from a silver result's magnitudes.

The overall (silver) view permutes each subject's criteria, so the requester sees how many failed
but not which; the magnitudes must not say it either. With one mask range for all criteria the
failing position's |v| gave the income criterion away whenever it exceeded what a register
criterion (|d| <= 1) can produce (23.5 % identified with certainty). Then, with ranges fitted per
criterion, the magnitudes still named it 42 % of the time (chance: 1/3): a passing income keeps a
magnitude that grows with how far below the line it lies, a passing register criterion's did not.

Now the nodes clamp the sum's terms just past the line in this view too (so a failing income
shows d = -1 like a failing register), and each sign-only criterion's mask is shaped like the
sum's (crypto.masks.derive_sign_masks: a pass like the sum's pass at a uniform distance, a fail
like the sum's one unit past). The attacker: gradient-boosted trees on every position's sign and
magnitude, trained on half the synthetic federation's single-failure people, scored on the rest
(balanced accuracy), through the gateway's own clamps and `criterion_masks`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app.synth import generate
from bench.privacy import KEY, _bins, silver_attack
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry

pytestmark = pytest.mark.slow(seconds=20)  # gradient-boosted trees on 60,000 people: handed out first
DIBAO = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("dibao")
# 60,000 people: 36,382 fail exactly one criterion, 18,191 scored.
POPULATION = generate(60_000, 20261206)
CHANCE = 1 / len(DIBAO.criteria)


def test_silver_magnitudes_name_the_failing_criterion_at_about_chance():
    result = silver_attack(DIBAO, POPULATION, KEY)
    # measured here (fixed key and people, so no chance failure): 0.353 / 0.338; the design before
    # 0.42; across mask keys the rate moves by about 0.012 (bench/privacy.py: 400,000 people)
    assert result["failing_position"] < CHANCE + 0.05
    assert result["every_position"] < CHANCE + 0.05


def test_positive_control_plain_masks_for_the_single_terms_give_it_away():
    """The same clamps with the sign-only criteria masked as plain (r, s'): a passing register's
    |v| stays below the passing income's, and every position together names the failing one."""
    plain = dataclasses.replace(DIBAO, sign_only=())
    assert silver_attack(plain, POPULATION, KEY)["every_position"] > CHANCE + 0.1  # measured 0.478


def test_one_mask_range_for_all_criteria_gives_the_income_criterion_away():
    """Positive control: r log-uniform below 2^32 for every criterion (the first design)."""
    rng = np.random.default_rng(5)
    n = 20_000
    r = np.floor(np.exp2(rng.random((2, n)) * 32))
    s = np.floor(rng.random((2, n)) * r)
    income = -np.floor(np.exp2(rng.uniform(0, 15, n)))
    v_income, v_flag = r[0] * income + s[0], -r[1] + s[1]
    # a failing position beyond 2^32 can only be the income criterion
    certain = (_bins(v_income) > _bins(v_flag).max()).mean()
    assert certain > 0.2  # the issue measured 23.5 %
