"""The clamps nodes apply before encrypting (policies/programs.py): a sign-only clamp of a single
term and a ceiling at or above a sum's least ceiling keep every verdict; the loader clamps sums
only where every term is non-negative, single terms whenever no other criterion reads them; the
masks' range is fitted to the clamped span."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.masks import mask_bound
from policies.catalogue import Catalogue, load_catalogue
from policies.programs import (
    DEFAULT_PROGRAM_DIR,
    NO_CLAMP,
    Clamp,
    Criterion,
    CriterionKind,
    ProgramRegistry,
    Term,
    clamp_keeps_verdict,
    clamps_for,
    load_program,
)
from xgate.errors import ConfigError

CATALOGUE, _ = load_catalogue()
SUM_KINDS = (CriterionKind.SUM_AT_MOST, CriterionKind.SUM_AT_LEAST)
ELEMENTS = ("tax.monthly_income", "hrss.monthly_pension", "civil_affairs.monthly_benefits")


def _criterion(kind: CriterionKind, threshold: int, terms: int) -> Criterion:
    return Criterion(id="crit", kind=kind, threshold=threshold, terms=tuple(Term(element=e) for e in ELEMENTS[:terms]))


@st.composite
def _ceilings(draw: st.DrawFn) -> tuple[Criterion, list[int], list[Clamp]]:
    terms = draw(st.integers(1, 3))
    criterion = _criterion(draw(st.sampled_from(SUM_KINDS)), draw(st.integers(-5, 5_000)), terms)
    values = draw(st.lists(st.integers(0, 3_000_000), min_size=terms, max_size=terms))
    # each term's ceiling: none or anywhere from the least one up
    least = criterion.least_ceiling
    ceilings = st.one_of(st.just(NO_CLAMP), st.builds(Clamp, st.none(), st.integers(least, least + 10_000)))
    return criterion, values, draw(st.lists(ceilings, min_size=terms, max_size=terms))


@given(_ceilings())
def test_a_ceiling_at_or_above_the_least_one_keeps_every_verdict(case):
    criterion, values, clamps = case
    assert clamp_keeps_verdict(criterion, values, clamps)


@given(st.sampled_from(SUM_KINDS), st.integers(-10_000, 10_000), st.integers(-3_000_000, 3_000_000))
def test_a_sign_only_clamp_keeps_a_single_terms_verdict_and_leaves_d_at_0_or_minus_1(kind, threshold, value):
    criterion = _criterion(kind, threshold, 1)
    clamp = criterion.sign_only_clamp
    assert clamp_keeps_verdict(criterion, [value], [clamp])  # whatever the sign of the value
    d = criterion.direction * (clamp.apply(value) - criterion.bound)
    assert d == (0 if criterion.passes(value) else -1)


def test_a_ceiling_below_the_least_one_would_change_verdicts():
    """The least ceiling is needed: one unit lower, a value just past the threshold comes back inside it."""
    at_most = _criterion(CriterionKind.SUM_AT_MOST, 1100, 1)
    assert at_most.least_ceiling == 1101
    assert not clamp_keeps_verdict(at_most, [5000], [Clamp(ceiling=1100)])
    at_least = _criterion(CriterionKind.SUM_AT_LEAST, 12, 1)
    assert at_least.least_ceiling == 12
    assert not clamp_keeps_verdict(at_least, [12], [Clamp(ceiling=11)])


def test_a_negative_term_would_let_a_clamped_term_change_the_verdict():
    """Why the loader clamps sums only where every term is non-negative."""
    at_most = _criterion(CriterionKind.SUM_AT_MOST, 1100, 2)
    # 5000 - 3000 = 2000 fails; clamped, 1101 - 3000 would pass
    assert not clamp_keeps_verdict(at_most, [5000, -3000], [Clamp(ceiling=1101), NO_CLAMP])


def test_a_floor_on_a_term_of_a_sum_would_change_verdicts():
    """Why floors are for single terms only: raising one term moves the others' sum past the line."""
    at_most = _criterion(CriterionKind.SUM_AT_MOST, 1100, 2)
    assert not clamp_keeps_verdict(at_most, [0, 500], [Clamp(1100, 1101), NO_CLAMP])


def test_shipped_programs_are_clamped_just_above_their_thresholds():
    registry = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, CATALOGUE)
    dibao = registry.get("dibao")
    assert dict(dibao.clamps) == {
        "tax.monthly_income": Clamp(ceiling=1101),
        "hrss.monthly_pension": Clamp(ceiling=1101),
        "civil_affairs.monthly_benefits": Clamp(ceiling=1101),
        "household.alive_resident": Clamp(0, 1),
        "tax.registered_businesses": Clamp(0, 1),
    }
    assert dibao.sign_only == (False, True, True)
    assert dibao.spans == (2_298_900, 1, 1000)
    assert [dibao.clamped_span(i) for i in range(3)] == [2203, 1, 1]
    assert mask_bound(2203) > 2**45 > mask_bound(2_298_900)  # ~10 more bits of mask spread
    # a passing income sum lies 0..1100 below the line; the two register criteria look like it
    assert dibao.passing_reaches == (1100, 0, 0)
    assert [dibao.overall_look(i) for i in range(3)] == [None, (2203, 1100, 2203), (2203, 1100, 2203)]
    certificate = registry.get("income_certificate")
    assert dict(certificate.clamps) == {"tax.monthly_income": Clamp(3000, 3001)}
    assert certificate.clamped_span(0) == 1 and certificate.spans == (1_997_000,)
    assert certificate.overall_look(0) is None  # no sum to look like
    months = registry.get("unemployment_subsidy")
    assert dict(months.clamps)["hrss.contribution_months"] == Clamp(11, 12)
    assert months.overall_look(0) is None and months.overall_look(1) is None


def _catalogue_with_a_signed_element(tmp_path: Path) -> Catalogue:
    text = (Path(__file__).resolve().parents[2] / "policies" / "catalogue.toml").read_text()
    text += (
        '\n[[elements]]\nid = "tax.net_adjustment"\nagency = "tax"\ntype = "int"\nunit = "CNY/month"\n'
        'min = -5000\nmax = 5000\nclassification = "important"\ndescription = "a signed adjustment"\n'
    )
    path = tmp_path / "catalogue.toml"
    path.write_text(text)
    return load_catalogue(path)[0]


PROGRAM = """
[program]
id = "pp"
version = "1"
title = "t"
requester_agencies = ["civil_affairs"]
purposes = ["dibao"]

[[criteria]]
id = "low"
kind = "sum_at_most"
threshold = 1100
terms = [{ element = "tax.monthly_income" }, { element = "hrss.monthly_pension" }]

[[criteria]]
id = "pension_floor"
kind = "value_at_least"
threshold = 3000
terms = [{ element = "hrss.monthly_pension" }]

[[criteria]]
id = "adjusted"
kind = "sum_at_most"
threshold = 2000
terms = [{ element = "civil_affairs.monthly_benefits" }, { element = "tax.net_adjustment" }]
"""


def test_the_loader_clamps_only_where_it_keeps_the_verdict(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PROGRAM)
    program = load_program(path, _catalogue_with_a_signed_element(tmp_path))
    clamps = dict(program.clamps)
    # read by two criteria: the larger least ceiling serves both, and the single term gets no floor
    assert clamps["hrss.monthly_pension"] == Clamp(ceiling=3000) and clamps["tax.monthly_income"] == Clamp(ceiling=1101)
    assert program.sign_only == (False, False, False)
    # a term that can be negative could offset a large one: neither term of that criterion is clamped
    assert "civil_affairs.monthly_benefits" not in clamps and "tax.net_adjustment" not in clamps
    assert program.clamped_span(2) == program.spans[2]
    assert program.clamp_label(0) == "hrss.monthly_pension[,3000],tax.monthly_income[,1101]"
    # 1100 - (1101 + 3000) at the far end, 1100 at the near one
    assert program.clamped_span(0) == 3001
    assert program.passing_reaches[:2] == (1100, 0)  # the pension clamped at 3000 passes at 3000 only
    # the single term read by another criterion too is not sign-only: shaped by nothing
    assert program.overall_look(1) is None


POOL = ("tax.monthly_income", "hrss.monthly_pension", "civil_affairs.monthly_benefits", "tax.registered_businesses")
KINDS = (
    CriterionKind.SUM_AT_MOST,
    CriterionKind.SUM_AT_LEAST,
    CriterionKind.VALUE_AT_MOST,
    CriterionKind.VALUE_AT_LEAST,
)


@st.composite
def _programs(draw: st.DrawFn) -> tuple[list[Criterion], dict[str, int]]:
    """Up to three criteria over a pool of catalogue elements (some shared), thresholds from below
    every sum to above it, and one value per element within its declared range."""
    criteria = []
    for index in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(KINDS))
        single = kind in (CriterionKind.VALUE_AT_MOST, CriterionKind.VALUE_AT_LEAST)
        elements = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=1 if single else 3, unique=True))
        threshold = draw(st.one_of(st.integers(-10, 10), st.integers(-5_000_000, 5_000_000)))
        criteria.append(
            Criterion(id=f"c{index}x", kind=kind, threshold=threshold, terms=tuple(Term(element=e) for e in elements))
        )
    values = {e: draw(st.integers(CATALOGUE.get(e).min, CATALOGUE.get(e).max)) for e in POOL}
    return criteria, values


@settings(max_examples=400)
@given(_programs())
def test_what_the_loader_clamps_keeps_every_verdict_in_every_view(case):
    """The loader's own clamps (both views), over any thresholds: a sum whose threshold lies below
    -1 is not clamped (its ceiling would be negative and flip the verdict; found by review)."""
    criteria, values = case
    for clamps in clamps_for(criteria, CATALOGUE):
        for criterion in criteria:
            terms = [values[t.element] for t in criterion.terms]
            assert clamp_keeps_verdict(criterion, terms, [clamps.get(t.element, NO_CLAMP) for t in criterion.terms])


def test_a_sum_below_minus_one_is_not_clamped():
    """The reviewer's case: at most -2 over income + pension, always failing; clamped at -1 each,
    -2 would pass."""
    criterion = _criterion(CriterionKind.SUM_AT_MOST, -2, 2)
    assert not clamp_keeps_verdict(criterion, [5, 7], [Clamp(ceiling=-1), Clamp(ceiling=-1)])
    per_criterion, cohort = clamps_for([criterion], CATALOGUE)
    assert per_criterion == {} and cohort == {}
    # at most -1: clamped at 0 in every view, never at the mirror's -1 (found by review)
    at_minus_one = _criterion(CriterionKind.SUM_AT_MOST, -1, 2)
    for clamps in clamps_for([at_minus_one], CATALOGUE):
        assert all(c.ceiling == 0 for c in clamps.values())
        assert clamp_keeps_verdict(at_minus_one, [5, 7], [clamps.get(t.element, NO_CLAMP) for t in at_minus_one.terms])


def test_two_programs_asking_one_question_must_clamp_it_alike(tmp_path: Path) -> None:
    """A second program reading the question's element in another criterion too would clamp it
    higher, and its answers would be a second sample of the same comparison (found by review)."""
    programs = tmp_path / "programs"
    programs.mkdir()
    dibao = (DEFAULT_PROGRAM_DIR / "dibao.toml").read_text()
    (programs / "dibao.toml").write_text(dibao)
    plus = dibao.replace('id = "dibao"', 'id = "dibao_plus"', 1) + (
        '\n[[criteria]]\nid = "income_floor"\nkind = "value_at_least"\nthreshold = 2000\n'
        'terms = [{ element = "tax.monthly_income", if_missing = 0 }]\n'
    )
    (programs / "dibao_plus.toml").write_text(plus)
    with pytest.raises(ConfigError, match=r"clamped otherwise .*second sample"):
        ProgramRegistry.load(programs, CATALOGUE)


@given(st.sampled_from(SUM_KINDS), st.integers(0, 100_000), st.integers(0, 3_000_000))
def test_a_mirror_ceiling_puts_a_failing_terms_distance_where_a_passing_one_lies(kind, threshold, value):
    """The cohort view's ceiling (2T + 1 at most, 2T at least): a single failing term's |d| is in
    [1, T + 1], a passing one's in [0, T], however far past the threshold the value lies."""
    criterion = _criterion(kind, threshold, 1)
    ceiling = Clamp(ceiling=criterion.mirror_ceiling)
    assert clamp_keeps_verdict(criterion, [value], [ceiling])
    d = criterion.direction * (ceiling.apply(value) - criterion.bound)
    assert (0 <= d <= threshold) if criterion.passes(value) else (1 <= -d <= threshold + 1)


def test_the_cohort_view_clamps_sums_at_their_mirror_ceiling():
    discovery = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, CATALOGUE).get("target_discovery")
    cohort = dict(discovery.cohort_clamps)
    assert cohort["tax.monthly_income"] == Clamp(ceiling=2201) and cohort["household.alive_resident"] == Clamp(0, 1)
    assert discovery.cohort_span(0) == 3 * 2201 - 1100  # all three terms at the ceiling
