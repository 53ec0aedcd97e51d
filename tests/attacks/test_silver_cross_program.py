"""Attack: name the failing criterion at silver by running two programs that share criteria.

Masks are keyed to the question a criterion asks, so that a second program asking it gets the
same masked value and no fresh sample (tests/attacks/test_second_program_fresh_sample.py). The
overall (silver) view only shuffles each subject's criteria. A silver caseworker who runs dibao
and then target_discovery for the same subjects in one mask period (each allowed, each charged
once) would see the shared criteria (income, residence) as equal values in both results, pair
them up, and read the one left over in each program: dibao's no_registered_business and
target_discovery's not_enrolled, exactly. In the overall view the program is now keyed into the
masks too, so no value repeats across programs (exchange/eligibility.py `criterion_masks`).

The verdicts alone do it too, masks or not: dibao failing one criterion while target_discovery
fails none says the failure was the registered business. So at silver a subject gets results from
one program of an overlap group per epoch (policies/silver_claims.py): the second program is
refused before anything is charged.

Real CheckService with the shipped policy set, a silver principal, the real probing budget and
approval registry; honest in-process nodes encrypting under the requester's key.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from crypto.he import RequesterKeys
from exchange.service import CheckService
from exchange.types import CheckRequest
from policies.budgets import ProbeBudget
from policies.catalogue import load_catalogue
from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
from policies.programs import DEFAULT_PROGRAM_DIR, ProgramRegistry
from policies.silver_claims import SilverClaims
from protos.xgate.v1 import node_pb2
from tests.honest_answers import HonestAnswers
from tests.unit.test_approvals import STANDING_REF, standing_registry
from tests.unit.test_check_service import MASK_KEY, FakeAuditor, pseudo
from tests.unit.test_policy_support import DAYTIME
from xgate.errors import NodeUnavailable, PolicyDenied
from xgate.principal import Principal

SILVER = Principal("ca-caseworker-silver", "civil_affairs", "caseworker", "silver")
GOLD = Principal("ca-caseworker-gold", "civil_affairs", "caseworker", "gold")
SUBJECTS = tuple(pseudo(i) for i in range(6))
# 0 fails only business, 1 only income, 2 only residence, 3 nothing, 4 only enrolment, 5 income and business
VALUES = {
    "tax.monthly_income": [0, 1500, 0, 300, 0, 2000],
    "hrss.monthly_pension": [500, 0, 0, 0, 0, 0],
    "civil_affairs.monthly_benefits": [0, 0, 0, 0, 0, 0],
    "household.alive_resident": [1, 1, 0, 1, 1, 1],
    "tax.registered_businesses": [1, 0, 0, 0, 0, 3],
    "civil_affairs.enrolled_dibao": [0, 0, 0, 0, 1, 0],
}


class HonestNodes:
    def __init__(self, down_for: int = 0) -> None:
        self.honest = HonestAnswers()
        self.down_for = down_for  # the first fan-outs fail: the tax node is down

    async def encrypt_all(
        self, requests: dict[str, node_pb2.EncryptRequest], deadline_s: float, public_context: bytes = b""
    ) -> dict[str, node_pb2.EncryptResponse]:
        if self.down_for:
            self.down_for -= 1
            raise NodeUnavailable("tax", "connection refused")
        rows = {p: i for i, p in enumerate(SUBJECTS)}
        return {
            agency: self.honest.answer(
                agency, request, lambda e, r=request: [VALUES[e][rows[p]] for p in r.pseudonyms], public_context
            )
            for agency, request in sorted(requests.items())
        }


class NoClaims:
    """The silver claims taken away (what the positive controls need: both programs answered)."""

    def reserve(self, subjects: Any, **_: Any) -> str:
        return ""

    def commit(self, reservation: str) -> bool:
        return False

    def release(self, reservation: str) -> bool:
        return False


def _results(
    who: Principal,
    programs: ProgramRegistry,
    keys: RequesterKeys,
    tmp: Path,
    claims: Any = None,
    nodes: HonestNodes | None = None,
    asked: tuple[str, ...] = ("dibao", "target_discovery"),
) -> dict[str, Any]:
    """Each program's decrypted values per subject, as a modified client reads them (without the
    silver claims unless given: the attacks below need both programs answered)."""
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR),
        budgets=ProbeBudget(tmp / "budget.db"),
        approvals=standing_registry(tmp / "approvals.db"),
        claims=claims if claims is not None else NoClaims(),
        clock=lambda: DAYTIME,
    )
    service = CheckService(
        programs=programs,
        nodes=nodes or HonestNodes(),
        mask_key=MASK_KEY,
        policy=policy,
        auditor=FakeAuditor(),
        clock=lambda: DAYTIME.timestamp(),
    )
    out = {}
    for program in asked:
        request = CheckRequest(
            program=program, purpose=program, legal_basis="SAR-2014-art-12", case_id="C-1",
            approval_ref=STANDING_REF, mode="he", pseudonyms=SUBJECTS, public_context=keys.public_context,
        )  # fmt: skip
        outcome = asyncio.run(service.run(who, request))
        n, blocks = len(SUBJECTS), [v.block or 0 for v in outcome.criteria]
        flat = keys.decrypt_masked(outcome.packed[0], n * (max(blocks) + 1)).tolist()
        out[program] = (outcome.view, [[flat[b * n + j] for b in blocks] for j in range(n)])
    return out


def _shared_values(results: dict[str, Any]) -> list[int]:
    """Per subject, how many values the two programs' results have in common."""
    (_, dibao), (_, target) = results["dibao"], results["target_discovery"]
    return [sum((Counter(d) & Counter(t)).values()) for d, t in zip(dibao, target, strict=True)]


def test_silver_results_of_two_programs_share_no_value_to_pair_up(
    programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path
) -> None:
    results = _results(SILVER, programs, requester_keys, tmp_path)
    assert {view for view, _ in results.values()} == {"overall"}
    assert _shared_values(results) == [0] * len(SUBJECTS)  # nothing to match: the leftover is unknown
    # The verdict is untouched: how many criteria each subject fails, in each program.
    _, dibao = results["dibao"]
    assert [sum(v < 0 for v in row) for row in dibao] == [1, 1, 1, 0, 0, 2]


def test_positive_control_per_criterion_masks_repeat_across_programs(
    programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path
) -> None:
    """At gold the criteria are named anyway; there the shared questions repeat (no fresh sample),
    and the pairing above would find the two shared criteria for every subject."""
    results = _results(GOLD, programs, requester_keys, tmp_path)
    assert {view for view, _ in results.values()} == {"per_criterion"}
    assert _shared_values(results) == [2] * len(SUBJECTS)


def _failures(results: dict[str, Any], program: str) -> list[int]:
    return [sum(v < 0 for v in row) for row in results[program][1]]


def test_positive_control_the_two_programs_verdicts_name_the_failing_criterion(
    programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path
) -> None:
    """Without the claims, counts alone do it: dibao fails 1 and target_discovery 0 only when the
    failure is the registered business (subject 0); dibao passes and target_discovery fails 1
    only when it is the enrolment (subject 4)."""
    results = _results(SILVER, programs, requester_keys, tmp_path)
    pairs = list(zip(_failures(results, "dibao"), _failures(results, "target_discovery"), strict=True))
    assert pairs[0] == (1, 0) and pairs[4] == (0, 1)


def test_a_second_program_of_the_group_is_refused_at_silver(
    programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path
) -> None:
    claims = SilverClaims(tmp_path / "claims.db")
    try:
        _results(SILVER, programs, requester_keys, tmp_path, claims=claims)
    except PolicyDenied as exc:
        assert "6 of 6 subjects have a silver result from program 'dibao'" in exc.message
        assert "target_discovery" in exc.message and exc.details["claimed_by"] == ["dibao"]
    else:
        raise AssertionError("target_discovery answered at silver for subjects dibao had answered")
    # refused before anything was charged: target_discovery's probing budget is untouched
    budget = ProbeBudget(tmp_path / "budget.db")
    with budget.db.read() as tx:
        charged = tx.execute("SELECT program, COUNT(*) FROM probe_windows GROUP BY program").fetchall()
    assert dict(charged) == {"dibao": len(SUBJECTS)} and budget.pending() == 0
    assert claims.holders(SUBJECTS[0], agency="civil_affairs") == {"dibao"}


def test_a_program_that_comes_to_share_a_question_later_still_finds_the_claims(
    programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path
) -> None:
    """dibao answers at silver while it overlaps nothing (target_discovery not yet registered);
    once target_discovery is added, it is refused for the same subjects. Found by review: a silver
    answer of a program without overlaps left no claim, and the added program answered, its
    verdicts and dibao's naming the failing criterion as in the positive control above."""
    before = tmp_path / "programs-before"
    before.mkdir()
    for program in DEFAULT_PROGRAM_DIR.glob("*.toml"):
        if program.name != "target_discovery.toml":
            shutil.copy(program, before / program.name)
    alone = ProgramRegistry.load(before, load_catalogue()[0])
    assert alone.get("dibao").overlaps == ()
    claims = SilverClaims(tmp_path / "claims.db")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    assert _results(SILVER, alone, requester_keys, first, claims=claims, asked=("dibao",))["dibao"][0] == "overall"
    assert claims.holders(SUBJECTS[0], agency="civil_affairs") == {"dibao"}
    with pytest.raises(PolicyDenied, match="have a silver result from program 'dibao'"):
        _results(SILVER, programs, requester_keys, second, claims=claims, asked=("target_discovery",))


def test_a_failed_check_leaves_no_claim(
    programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path
) -> None:
    """dibao's check fails (its tax node is down): its claims are released, so target_discovery,
    asked next, is answered."""
    claims = SilverClaims(tmp_path / "claims.db")
    down = HonestNodes(down_for=1)
    first, second = tmp_path / "first", tmp_path / "second"  # one gateway state each, the claims shared
    first.mkdir(), second.mkdir()
    with pytest.raises(NodeUnavailable):
        _results(SILVER, programs, requester_keys, first, claims=claims, nodes=down, asked=("dibao",))
    assert claims.holders(SUBJECTS[0], agency="civil_affairs") == set()
    answered = _results(SILVER, programs, requester_keys, second, claims=claims, asked=("target_discovery",))
    assert answered["target_discovery"][0] == "overall"
    assert claims.holders(SUBJECTS[0], agency="civil_affairs") == {"target_discovery"}


def test_without_a_claims_store_overlapping_programs_are_refused_at_silver(
    programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path
) -> None:
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR), approvals=standing_registry(tmp_path / "a.db"), clock=lambda: DAYTIME
    )
    request = CheckRequest(
        program="dibao", purpose="dibao", legal_basis="SAR-2014-art-12", case_id="C-1",
        approval_ref=STANDING_REF, mode="he", pseudonyms=SUBJECTS, public_context=requester_keys.public_context,
    )  # fmt: skip
    with pytest.raises(PolicyDenied, match="keeps no silver claims"):
        policy.authorize_check(SILVER, programs.get("dibao"), request)
    assert policy.authorize_check(GOLD, programs.get("dibao"), request).view == "per_criterion"


def test_at_gold_both_programs_answer(programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path) -> None:
    """Gold names every criterion anyway: the claims apply to the overall view only."""
    results = _results(GOLD, programs, requester_keys, tmp_path, claims=SilverClaims(tmp_path / "claims.db"))
    assert {view for view, _ in results.values()} == {"per_criterion"}
