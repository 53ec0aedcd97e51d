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

from bench.privacy import extra_bits
from crypto.he import PublicContext
from exchange.eligibility import CheckScope, build_requests, combine_he, validate_he_response
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
    requests = build_requests(program, SCOPE, [VICTIM], node_pb2.EXCHANGE_MODE_HE, public_context.ref, clamped=True)
    honest = HonestAnswers()
    ciphertexts = {}
    for agency, request in requests.items():
        response = honest.answer(agency, request, lambda e: [values[e]], requester_keys.public_context)
        ciphertexts.update(validate_he_response(agency, request, response, public_context))
    income, *_ = combine_he(program, [VICTIM], public_context, ciphertexts, KEY, epoch=7)
    return int(requester_keys.decrypt_masked(income.ciphertexts[0], 1)[0])


def test_how_far_above_the_threshold_a_value_lies_does_not_reach_the_requester(requester_keys, public_context):
    near, far = (_masked_income(DIBAO, x, requester_keys, public_context) for x in (5_000, 500_000))
    assert near < 0 and far < 0  # both fail, exactly as before
    assert near == far  # and nothing else tells them apart


def test_without_clamps_the_values_tell_the_two_apart(requester_keys, public_context):
    """Positive control: the same program with its clamps removed (the design before)."""
    unclamped = dataclasses.replace(DIBAO, clamps=(), clamped_spans=())
    near, far = (_masked_income(unclamped, x, requester_keys, public_context) for x in (5_000, 500_000))
    assert near < 0 and far < 0
    assert abs(far) > 50 * abs(near)  # |v| grows with |d|: 499,000 against 3,900 above the line


def test_clamped_masks_leave_a_third_of_the_magnitude_information():
    """The bound, measured as bench/privacy.py does (mutual information between floor(log2|d|) and
    log2|v| at half-bit resolution, log2|d| uniform over the span): the clamped span of the 低保
    income criterion leaves < 0.35 bits per query; the catalogue span it replaced > 0.75."""
    clamped = extra_bits(100_000, DIBAO.span(0, clamped=True), 1, 1)["gold"]
    whole = extra_bits(100_000, DIBAO.span(0), 1, 1)["gold"]
    assert clamped < 0.35 < 0.75 < whole
