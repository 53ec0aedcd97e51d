"""What a requester's tier may see of a result (pure decision logic; HE shaping lives elsewhere).

gold: pass/fail per criterion per subject; silver: one overall verdict per subject;
bronze: cohort counts only, and only for cohorts of at least `min_cohort` subjects (smaller
cohorts would single people out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from xgate.errors import InvalidInput, PolicyDenied

DEFAULT_MIN_COHORT = 10


class View(StrEnum):
    PER_CRITERION = "per_criterion"
    OVERALL = "overall"
    COHORT = "cohort"


TIER_VIEWS: dict[str, View] = {"gold": View.PER_CRITERION, "silver": View.OVERALL, "bronze": View.COHORT}


def view_for(tier: str, cohort_size: int, min_cohort: int = DEFAULT_MIN_COHORT) -> View:
    """The view a tier gets for a request about `cohort_size` subjects; raises PolicyDenied."""
    if tier not in TIER_VIEWS:
        raise PolicyDenied(f"unknown tier '{tier}'", tier=tier)
    if min_cohort < 1:
        raise InvalidInput("min_cohort must be at least 1")
    view = TIER_VIEWS[tier]
    if view is View.COHORT and cohort_size < min_cohort:
        raise PolicyDenied(
            f"tier '{tier}' sees cohort counts only, and {cohort_size} subjects is below the minimum cohort of "
            f"{min_cohort}",
            tier=tier,
            cohort_size=cohort_size,
            min_cohort=min_cohort,
        )
    return view


@dataclass(frozen=True)
class ShapedResult:
    view: View
    per_criterion: dict[str, list[bool]] | None = None  # gold
    overall: list[bool] | None = None  # silver
    cohort: dict[str, int] | None = None  # bronze: subjects passing each criterion, and all


def shape(tier: str, passes: Mapping[str, Sequence[bool]], min_cohort: int = DEFAULT_MIN_COHORT) -> ShapedResult:
    """Cut plaintext per-criterion results (plaintext mode / tests) down to what the tier may see."""
    lengths = {len(v) for v in passes.values()}
    if len(lengths) != 1:
        raise InvalidInput("every criterion needs one result per subject")
    (n,) = lengths
    view = view_for(tier, n, min_cohort)
    overall = [all(col) for col in zip(*passes.values(), strict=True)]
    if view is View.PER_CRITERION:
        return ShapedResult(view, per_criterion={k: list(v) for k, v in passes.items()})
    if view is View.OVERALL:
        return ShapedResult(view, overall=overall)
    counts = {k: sum(v) for k, v in passes.items()}
    counts["all"] = sum(overall)
    counts["subjects"] = n
    return ShapedResult(view, cohort=counts)
