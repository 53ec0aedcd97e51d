"""The per-criterion view's clamps (policies/programs.py): a clamp at or above a criterion's floor
keeps every verdict, the loader clamps only where every term is non-negative, and the masks'
range is fitted to the clamped span."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from crypto.masks import mask_bound
from policies.catalogue import Catalogue, load_catalogue
from policies.programs import (
    DEFAULT_PROGRAM_DIR,
    Criterion,
    CriterionKind,
    ProgramRegistry,
    Term,
    clamp_keeps_verdict,
    load_program,
)

CATALOGUE, _ = load_catalogue()
SUM_KINDS = (CriterionKind.SUM_AT_MOST, CriterionKind.SUM_AT_LEAST)
ELEMENTS = ("tax.monthly_income", "hrss.monthly_pension", "civil_affairs.monthly_benefits")


def _criterion(kind: CriterionKind, threshold: int, terms: int) -> Criterion:
    return Criterion(id="crit", kind=kind, threshold=threshold, terms=tuple(Term(element=e) for e in ELEMENTS[:terms]))


@st.composite
def _cases(draw: st.DrawFn) -> tuple[Criterion, list[int], list[int]]:
    terms = draw(st.integers(1, 3))
    criterion = _criterion(draw(st.sampled_from(SUM_KINDS)), draw(st.integers(-5, 5_000)), terms)
    values = draw(st.lists(st.integers(0, 3_000_000), min_size=terms, max_size=terms))
    # each term's clamp: none (0) or anywhere from the floor up
    clamps = draw(
        st.lists(
            st.one_of(st.just(0), st.integers(criterion.clamp_floor, criterion.clamp_floor + 10_000)),
            min_size=terms,
            max_size=terms,
        )
    )
    return criterion, values, clamps


@given(_cases())
def test_a_clamp_at_or_above_the_floor_keeps_every_verdict(case):
    criterion, values, clamps = case
    assert clamp_keeps_verdict(criterion, values, clamps)


def test_a_clamp_below_the_floor_would_change_verdicts():
    """The floor is needed: one unit lower, a value just past the threshold comes back inside it."""
    at_most = _criterion(CriterionKind.SUM_AT_MOST, 1100, 1)
    assert at_most.clamp_floor == 1101
    assert not clamp_keeps_verdict(at_most, [5000], [1100])
    at_least = _criterion(CriterionKind.SUM_AT_LEAST, 12, 1)
    assert at_least.clamp_floor == 12
    assert not clamp_keeps_verdict(at_least, [12], [11])


def test_a_negative_term_would_let_a_clamped_term_change_the_verdict():
    """Why the loader clamps only criteria whose terms are all non-negative."""
    at_most = _criterion(CriterionKind.SUM_AT_MOST, 1100, 2)
    # 5000 - 3000 = 2000 fails; clamped, 1101 - 3000 would pass
    assert not clamp_keeps_verdict(at_most, [5000, -3000], [1101, 0])


def test_shipped_programs_are_clamped_just_above_their_thresholds():
    registry = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, CATALOGUE)
    dibao = registry.get("dibao")
    assert dict(dibao.clamps) == {
        "tax.monthly_income": 1101,
        "hrss.monthly_pension": 1101,
        "civil_affairs.monthly_benefits": 1101,
        "household.alive_resident": 1,
        "tax.registered_businesses": 1,
    }
    assert dibao.spans == (2_298_900, 1, 1000)
    assert dibao.clamped_spans == (2203, 1, 1)
    assert mask_bound(2203) > 2**45 > mask_bound(2_298_900)  # ~10 more bits of mask spread
    certificate = registry.get("income_certificate")
    assert certificate.clamped_spans == (3000,) and certificate.spans == (1_997_000,)


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
    # read by two criteria: the larger floor serves both
    assert clamps["hrss.monthly_pension"] == 3000 and clamps["tax.monthly_income"] == 1101
    # a term that can be negative could offset a large one: neither term of that criterion is clamped
    assert "civil_affairs.monthly_benefits" not in clamps and "tax.net_adjustment" not in clamps
    assert program.clamped_spans[2] == program.spans[2]
    assert program.clamp_label(0) == "hrss.monthly_pension<=3000,tax.monthly_income<=1101"
    # 1100 - (1101 + 3000) at the far end, 1100 at the near one
    assert program.clamped_spans[0] == 3001
