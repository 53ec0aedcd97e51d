"""Attack (issue 13, item 4): read how far above the threshold a failing applicant lies.

A masked value is v = r*d + s' with d = T - S, so log2|v| ~ log2 r + log2|d|: before clamping a
requester could tell an applicant 3,900 CNY above the 低保 line from one 499,000 above it, and
the masks' range, fitted to the catalogue's 2.3-million-CNY span, left about 0.8 bits about |d|
per query. In the per-criterion view the nodes now encode min(x, T + 1) for each non-negative
term (policies/programs.py clamps): the verdict is unchanged, the two applicants' values are
identical, and the masks are fitted to the clamped span.

The attack runs through the gateway's own request builder, an honest node's answer
(tests/honest_answers.py, which clamps as nodes/service.py does), the combine and the requester's
decryption. Positive control: the same program without clamps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from bench.privacy import _bins, _mutual_information, extra_bits
from crypto.he import PublicContext
from crypto.masks import derive_masks
from crypto.value_tags import tag_table
from exchange.eligibility import (
    CheckScope,
    build_cohort_requests,
    build_requests,
    combine_cohort_he,
    combine_he,
    criterion_masks,
    validate_he_response,
    value_tags_of,
)
from policies.catalogue import load_catalogue
from policies.programs import DEFAULT_PROGRAM_DIR, Program, ProgramRegistry
from protos.xgate.v1 import node_pb2
from tests.honest_answers import HonestAnswers

DIBAO = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("dibao")
KEY = b"\x05" * 32
VICTIM = "a" * 26
SCOPE = CheckScope("req-1", "civil_affairs", "cw", "caseworker", "gold", "dibao", "reg:1", "case-1")


def _masked_income(program: Program, income: int, requester_keys: Any, public_context: PublicContext) -> int:
    """What the requester decrypts for the victim's income criterion in the per-criterion view."""
    values = {
        "tax.monthly_income": income,
        "tax.registered_businesses": 0,
        "hrss.monthly_pension": 0,
        "civil_affairs.monthly_benefits": 0,
        "household.alive_resident": 1,
    }
    requests = build_requests(program, SCOPE, [VICTIM], node_pb2.EXCHANGE_MODE_HE, public_context.ref, epoch=7)
    honest = HonestAnswers()
    ciphertexts, responses = {}, {}
    for agency, request in requests.items():
        responses[agency] = honest.answer(agency, request, lambda e: [values[e]], requester_keys.public_context)
        ciphertexts.update(validate_he_response(agency, request, responses[agency], public_context))
    assert value_tags_of(requests, responses)  # the nodes tag what they hold: a fresh draw of masks per value
    # One draw of the masks for both worlds (the tags are a keyed hash: whichever the value, the masks
    # are a uniform draw), so equal results mean the value reaches the requester only through d.
    tags = tag_table(b"\x06" * 32, 7, {t.element: [0] for t in program.elements()}, [VICTIM])
    income, *_ = combine_he(program, [VICTIM], public_context, ciphertexts, KEY, epoch=7, tags=tags)
    return int(requester_keys.decrypt_masked(income.ciphertexts[0], 1)[0])


def test_how_far_above_the_threshold_a_value_lies_does_not_reach_the_requester(requester_keys, public_context):
    near, far = (_masked_income(DIBAO, x, requester_keys, public_context) for x in (5_000, 500_000))
    assert near < 0 and far < 0  # both fail, exactly as before
    assert near == far  # and nothing else tells them apart


def test_without_clamps_the_values_tell_the_two_apart(requester_keys, public_context):
    """Positive control: the same program with its clamps removed (the design before)."""
    unclamped = dataclasses.replace(DIBAO, clamps=(), clamped_spans=(), sign_only=(), passing_reaches=())
    near, far = (_masked_income(unclamped, x, requester_keys, public_context) for x in (5_000, 500_000))
    assert near < 0 and far < 0
    assert abs(far) > 50 * abs(near)  # |v| grows with |d|: 499,000 against 3,900 above the line


def test_clamped_masks_leave_a_third_of_the_magnitude_information():
    """The bound, measured as bench/privacy.py does (mutual information between floor(log2|d|) and
    log2|v| at half-bit resolution, log2|d| uniform over the span): the clamped span of the 低保
    income criterion leaves < 0.35 bits per query; the catalogue span it replaced > 0.75."""
    clamped = extra_bits(100_000, DIBAO.clamped_span(0), 1, 1)["gold"]
    whole = extra_bits(100_000, DIBAO.span(0), 1, 1)["gold"]
    assert clamped < 0.35 < 0.75 < whole


CERTIFICATE = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("income_certificate")


def _incomes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Half passing (0..3,000 CNY), half failing (3,001..2,000,000), log-uniform within each."""
    passing = np.floor(np.exp2(rng.uniform(0, np.log2(3001), n // 2)))
    failing = np.floor(np.exp2(rng.uniform(np.log2(3001), np.log2(2_000_000), n - n // 2)))
    return np.concatenate([passing, failing]).astype(np.int64)


def _masked(program: Program, incomes: np.ndarray, clamp: bool, hide_order: bool = False) -> np.ndarray:
    """v = r*d + s' for the certificate's one criterion, as the nodes (clamped) and the gateway
    (`criterion_masks`, in the per-criterion or overall view) compute it; unclamped, the design
    before: masks over the catalogue's span."""
    criterion = program.criteria[0]
    clamp_of = program.element_clamps()["tax.monthly_income"]
    values = np.array([clamp_of.apply(int(x)) for x in incomes]) if clamp else incomes
    d = criterion.direction * (values - criterion.bound)
    pseudonyms = [f"{i:026x}" for i in range(len(d))]
    if clamp:
        tags = tag_table(b"\x06" * 32, 3, {t.element: values for t in program.elements()}, pseudonyms)
        r, s = criterion_masks(program, KEY, 3, pseudonyms, hide_order, tags=tags)[0]
    else:
        r, s = derive_masks(KEY, criterion.question, 3, pseudonyms, program.span(0))
    return r.astype(object) * d.astype(object) + s.astype(object)


def test_a_single_term_criterion_tells_the_sign_alone_in_every_view():
    """The income certificate's one criterion: its node clamps the income to [3000, 3001] in every
    view, so d is 0 or -1 and |v| says nothing of the income beyond its sign (measured as
    bench/privacy.py does, at gold and in the overall view, against the same magnitudes paired
    with incomes shuffled within each verdict); without the clamp the same attack reads 0.4 bits."""
    rng = np.random.default_rng(11)
    incomes = _incomes(60_000, rng)
    classes = np.floor(np.log2(np.abs(CERTIFICATE.criteria[0].bound - incomes) + 1)).astype(int)
    for hide_order in (False, True):
        v = _masked(CERTIFICATE, incomes, clamp=True, hide_order=hide_order)
        assert list(v < 0) == list(incomes > 3000)  # the verdicts, exact
        # the sign's own bit, and the plug-in estimator's bias: what the same magnitudes give
        # against classes drawn apart from them but with the same verdict
        passing = incomes <= 3000
        null = classes.copy()
        for side in (passing, ~passing):
            null[side] = rng.permutation(classes[side])
        assert _mutual_information(classes, _bins(v)) < _mutual_information(null, _bins(v)) + 0.005
    assert _mutual_information(classes, _bins(_masked(CERTIFICATE, incomes, clamp=False))) > 0.3


def _bronze_attack(clamp: bool) -> tuple[float, float]:
    """A modified client handed the victim's slot reads its noisy sign and |v| and guesses the
    verdict (a Bayes classifier on the binned magnitude and sign, fitted on half the slots):
    (success, the ceiling a sign alone allows: e^eps/(1+e^eps) + 3 sigma)."""
    from exchange.cohort import attack_bound, flip_probability

    rng = np.random.default_rng(13)
    incomes = _incomes(40_000, rng)
    v = _masked(CERTIFICATE, incomes, clamp=clamp)
    flips = rng.random(len(v)) < flip_probability(1.0)
    v = np.where(flips, -v - 1, v)  # exchange/cohort.py flip_masks
    truth = (incomes <= 3000).astype(int)
    feature = _bins(v) * 2 + (v >= 0).astype(int)
    order = rng.permutation(len(v))
    train, test = order[: len(v) // 2], order[len(v) // 2 :]
    counts = np.zeros((2, feature.max() + 1))
    np.add.at(counts, (truth[train], feature[train]), 1)
    success = float((counts.argmax(axis=0)[feature[test]] == truth[test]).mean())
    bound = attack_bound(1.0)
    return success, bound + 3 * float(np.sqrt(bound * (1 - bound) / len(test)))


def test_at_bronze_a_single_terms_magnitude_does_not_beat_the_randomized_response():
    """Bronze flips each slot's sign with p = 1/(1+e^eps) (v' = -v - 1). With the clamp |v| is
    distributed alike for a pass and a fail, flipped or not: the best guess is the noisy sign."""
    success, ceiling = _bronze_attack(clamp=True)
    assert success <= ceiling


def test_at_bronze_an_unclamped_magnitude_beats_the_randomized_response():
    """Positive control: whole incomes, failing ones far above the line, give the flips away."""
    success, ceiling = _bronze_attack(clamp=False)
    assert success > ceiling + 0.02  # 0.775 against 0.740


DISCOVERY = ProgramRegistry.load(DEFAULT_PROGRAM_DIR, load_catalogue()[0]).get("target_discovery")


def _cohort_income(program: Program, income: int, requester_keys: Any, public_context: PublicContext) -> int:
    """What the requester decrypts for the victim's income slot in the cohort (bronze) view: the
    gateway's cohort requests, an honest node's answer, the cohort combine (no flip)."""
    values = {
        "tax.monthly_income": income,
        "hrss.monthly_pension": 0,
        "civil_affairs.monthly_benefits": 0,
        "household.alive_resident": 1,
        "civil_affairs.enrolled_dibao": 0,
    }
    orders = [[VICTIM]] * len(program.criteria)
    plans = build_cohort_requests(program, SCOPE, orders, public_context.ref)
    honest = HonestAnswers()
    ciphertexts = []
    for plan in plans:
        got: dict[str, Any] = {}
        for agency, request in plan.items():
            response = honest.answer(agency, request, lambda e: [values[e]], requester_keys.public_context)
            got.update(validate_he_response(agency, request, response, public_context))
        ciphertexts.append(got)
    flips = [np.zeros(1, dtype=bool)] * len(program.criteria)
    income, *_ = combine_cohort_he(program, orders, public_context, ciphertexts, KEY, 9, flips)
    return int(requester_keys.decrypt_masked(income.ciphertexts[0], 1)[0])


def test_at_bronze_a_sum_failing_far_past_the_line_looks_like_one_failing_just_past_its_mirror(
    requester_keys, public_context
):
    """The cohort view's nodes clamp each income term at 2T + 1 = 2,201: an applicant 1,101 CNY
    above the line and one 498,900 above it decrypt to the same slot value, at the distance from
    the line of an applicant with no income at all below it (T + 1 against T)."""
    mirror, far = (_cohort_income(DISCOVERY, x, requester_keys, public_context) for x in (2_201, 500_000))
    assert mirror < 0 and far < 0 and mirror == far
    unclamped = dataclasses.replace(DISCOVERY, cohort_clamps=(), cohort_spans=())
    near, far = (_cohort_income(unclamped, x, requester_keys, public_context) for x in (2_201, 500_000))
    assert abs(far) > 100 * abs(near)  # positive control: whole sums, |v| grows with |d|
