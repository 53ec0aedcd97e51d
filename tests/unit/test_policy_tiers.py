"""Tier shaping: gold per criterion, silver overall, bronze cohort counts above a minimum size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.tiers import View, shape, view_for
from xgate.errors import InvalidInput, PolicyDenied

PASSES = {"income": [True, False, True] * 4, "alive": [True, True, False] * 4}


def test_views_per_tier() -> None:
    assert view_for("gold", 1) is View.PER_CRITERION
    assert view_for("silver", 1) is View.OVERALL
    assert view_for("bronze", 10) is View.COHORT


def test_gold_sees_each_criterion() -> None:
    result = shape("gold", PASSES)
    assert result.per_criterion == PASSES
    assert result.overall is None and result.cohort is None


def test_silver_sees_only_overall() -> None:
    result = shape("silver", PASSES)
    assert result.per_criterion is None and result.cohort is None
    assert result.overall == [True, False, False] * 4


def test_bronze_sees_counts_only() -> None:
    result = shape("bronze", PASSES)
    assert result.per_criterion is None and result.overall is None
    assert result.cohort == {"income": 8, "alive": 8, "all": 4, "subjects": 12}


def test_bronze_small_cohort_is_refused() -> None:
    with pytest.raises(PolicyDenied, match="minimum cohort of 10") as err:
        view_for("bronze", 9)
    assert err.value.details["cohort_size"] == 9
    with pytest.raises(PolicyDenied):
        shape("bronze", {"income": [True] * 5})
    assert view_for("bronze", 5, min_cohort=5) is View.COHORT


def test_unknown_tier_and_ragged_input_are_refused() -> None:
    with pytest.raises(PolicyDenied):
        view_for("platinum", 100)
    with pytest.raises(InvalidInput):
        shape("gold", {"a": [True], "b": [True, False]})


@given(st.integers(min_value=0, max_value=100), st.integers(min_value=1, max_value=50))
def test_bronze_threshold_property(size: int, minimum: int) -> None:
    if size >= minimum:
        assert view_for("bronze", size, minimum) is View.COHORT
    else:
        with pytest.raises(PolicyDenied):
            view_for("bronze", size, minimum)
