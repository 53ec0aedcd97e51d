"""Attack (issue 13, item 3): one shuffle shared by all criteria kept a bronze slot's criteria linked.

With one order for every criterion, slot j of each criterion was one (unknown) person, so a
modified client read that person's verdict on every criterion together (and, with a predictable
member, whose they were). The cohort view now sends each criterion's subjects to the nodes in
its own order (one fan-out per criterion, exchange/eligibility.py build_cohort_requests), drawn
independently from the OS CSPRNG: the same slot in two criteria is the same person only by
chance (1/n).
"""

from __future__ import annotations

from bench.privacy import _pseudonyms, slot_linkage
from exchange.eligibility import CheckScope, build_cohort_requests
from exchange.service import SystemRandomness, _CohortPlan
from exchange.types import CheckRequest
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry
from policies.types import PolicyOutcome


def test_slot_linkage_across_criteria_is_at_chance() -> None:
    """Orders come from the OS CSPRNG (not seeded): 4.5 standard errors keep false alarms near 1e-5."""
    measured = slot_linkage(2000, cohort=10)
    assert abs(measured["same_person_rate"] - measured["chance_rate"]) <= 1.5 * measured["margin_3_sigma"]


def test_each_criterion_goes_to_the_nodes_in_its_own_order() -> None:
    program = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("target_discovery")
    subjects = tuple(_pseudonyms(12, "o"))
    request = CheckRequest("target_discovery", "target_discovery", "x", "c", subjects)
    plan = _CohortPlan.draw(program, request, PolicyOutcome("cohort"), SystemRandomness())
    scope = CheckScope("r-1", "civil_affairs", "u", "caseworker", "bronze", "target_discovery", "x", "c")
    plans = build_cohort_requests(program, scope, plan.secrets.orders, b"ctx")
    assert len(plans) == len(program.criteria)
    for criterion, order, requests in zip(program.criteria, plan.secrets.orders, plans, strict=True):
        assert sorted(order) == sorted(subjects)
        assert {q.element for r in requests.values() for q in r.elements} == {t.element for t in criterion.terms}
        assert all(list(r.pseudonyms) == list(order) for r in requests.values())


def test_positive_control_one_shared_order_links_every_slot() -> None:
    """The old design (one shuffle for all criteria): slot j is the same person in every criterion."""
    order = list(_pseudonyms(10, "s"))
    SystemRandomness().shuffle(order)
    orders = [order] * 3
    same = sum(x == y for a in range(3) for b in range(a + 1, 3) for x, y in zip(orders[a], orders[b], strict=True))
    assert same == 3 * len(order)
