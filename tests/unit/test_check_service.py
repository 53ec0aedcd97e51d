"""exchange/service.py CheckService with fakes for every port: node client, policy, budgets,
auditor, clock, randomness. Domain types in and out; no REST, no gRPC, no processes.

Each failure path shows what the check did NOT do: no fan-out after a refusal, no budget spent
on a malformed request, no partial verdict and no result entry after a node failure.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from audit.records import AuditRecord
from crypto.artefacts import Signer
from crypto.envelope import SigningKey
from crypto.he import SLOTS, PublicContext
from exchange.eligibility import echo_clamp, query_clamp
from exchange.service import CheckService
from exchange.types import CheckOutcome, CheckRequest
from policies.check_statements import Question, RequesterKey, sign_check
from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
from policies.programs import ProgramRegistry
from policies.types import BudgetRule, CheckContext, PolicyOutcome
from protos.xgate.v1 import node_pb2
from tests.honest_answers import HonestAnswers
from tests.unit.test_approvals import STANDING_REF, standing_registry
from tests.unit.test_policy_support import DAYTIME
from xgate.errors import (
    BudgetExhausted,
    InvalidInput,
    NodePadLost,
    NodeProtocolError,
    NodeTimeout,
    NodeUnavailable,
    PadUnknown,
    PayloadTooLarge,
    PolicyDenied,
)
from xgate.principal import Principal

PROGRAM_DIR = DEFAULT_POLICY_DIR / "programs"
GOLD = Principal("ca-caseworker-gold", "civil_affairs", "caseworker", "gold")
MASK_KEY = b"\x42" * 32
HASH_1, HASH_2 = "a1" * 32, "b2" * 32  # policy set hashes (sha256 hex)


def pseudo(i: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "".join(alphabet[(i >> (5 * k)) % 32] for k in range(26))


SUBJECTS = tuple(pseudo(i) for i in range(6))
# Per element, per subject: chosen so that every dibao criterion passes for some and fails for others.
VALUES: dict[str, list[int]] = {
    "tax.monthly_income": [0, 800, 1200, 300, 0, 1100],
    "hrss.monthly_pension": [500, 0, 0, 900, 1100, 0],
    "civil_affairs.monthly_benefits": [100, 0, 0, 0, 1, 0],
    "household.alive_resident": [1, 1, 1, 0, 1, 1],
    "tax.registered_businesses": [0, 0, 0, 0, 0, 2],
}


def oracle(program: Any, subjects: tuple[str, ...]) -> dict[str, list[bool]]:
    index = {p: i for i, p in enumerate(SUBJECTS)}
    out = {}
    for criterion in program.criteria:
        totals = [sum(VALUES[t.element][index[p]] for t in criterion.terms) for p in subjects]
        out[criterion.id] = [criterion.passes(total) for total in totals]
    return out


@dataclass
class FakeNodes:
    """The fan-out port: answers like honest nodes unless told to fail or garble."""

    fail: Exception | None = None
    garble: Any = None  # callable(agency, response) -> None, edits one answer
    calls: list[tuple[dict[str, node_pb2.EncryptRequest], float]] = field(default_factory=list)
    delay_s: float = 0.0
    honest: HonestAnswers = field(default_factory=HonestAnswers)

    async def encrypt_all(
        self, requests: Mapping[str, node_pb2.EncryptRequest], deadline_s: float, public_context: bytes = b""
    ) -> dict[str, node_pb2.EncryptResponse]:
        # Copies: the service re-points the same requests at a new pad batch when it retries.
        self.calls.append(({a: _copied(r) for a, r in requests.items()}, deadline_s))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        out = {}
        rows = {p: i for i, p in enumerate(SUBJECTS)}
        for index, (agency, request) in enumerate(sorted(requests.items())):

            def values_of(element: str, request: node_pb2.EncryptRequest = request) -> list[int]:
                return [VALUES[element][rows[p]] for p in request.pseudonyms]

            if request.mode == node_pb2.EXCHANGE_MODE_PLAINTEXT:
                response = node_pb2.EncryptResponse(agency=agency, request_id=request.context.request_id)
                for query in request.elements:
                    values = [query_clamp(query).apply(x) for x in values_of(query.element)]
                    echo_clamp(response.elements.add(element=query.element), query).plain_values.extend(values)
            else:
                try:
                    response = self.honest.answer(agency, request, values_of, public_context)
                except PadUnknown as exc:  # what the fan-out makes of the node's NOT_FOUND pad_unknown
                    raise NodePadLost(agency, exc.message) from None
            response.node_audit_index = 100 + index
            response.node_audit_leaf_hash = bytes([index]) * 32
            if self.garble is not None:
                self.garble(agency, response)
            out[agency] = response
        return out


def _copied(request: node_pb2.EncryptRequest) -> node_pb2.EncryptRequest:
    copy = node_pb2.EncryptRequest()
    copy.CopyFrom(request)
    return copy


@dataclass
class FakePolicy:
    outcome: PolicyOutcome = field(default_factory=lambda: PolicyOutcome("per_criterion", ("p-1",), HASH_1))
    refuse: Exception | None = None
    asked: list[CheckContext] = field(default_factory=list)

    def authorize_check(self, principal: Principal, program: Any, request: CheckContext) -> PolicyOutcome:
        self.asked.append(request)
        if self.refuse is not None:
            raise self.refuse
        return self.outcome


@dataclass
class FakeAuditor:
    """Keeps the events; each must be a record the real audit log accepts (audit/records.py)."""

    events: list[dict[str, Any]] = field(default_factory=list)

    async def record(self, event: dict[str, Any]) -> None:
        AuditRecord.from_event(event)  # refuses unknown kinds, personal data, malformed fields
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]


class FixedRandomness:
    def __init__(self, flip: bool = False) -> None:
        self.epochs = 0
        self.flip = flip  # cohort view: flip every slot (True) or none
        self.flip_calls: list[tuple[int, float]] = []

    def request_id(self) -> str:
        return "req-fixed"

    def shuffle(self, items: list[str]) -> None:
        items.reverse()

    def epoch(self) -> int:
        self.epochs += 1
        return 12345

    def flips(self, n: int, p: float) -> Any:
        import numpy as np

        self.flip_calls.append((n, p))
        return np.full(n, self.flip, dtype=bool)


def _service(programs: ProgramRegistry, **kw: Any) -> tuple[CheckService, FakeNodes, FakePolicy, FakeAuditor]:
    nodes = kw.pop("nodes", FakeNodes())
    policy = kw.pop("policy", FakePolicy())
    auditor = FakeAuditor()
    kw.setdefault("allow_plaintext_mode", True)
    service = CheckService(
        programs=programs,
        nodes=nodes,
        mask_key=MASK_KEY,
        policy=policy,
        auditor=auditor,
        clock=lambda: 1_780_000_000.0,
        randomness=kw.pop("randomness", FixedRandomness()),
        **kw,
    )
    return service, nodes, policy, auditor


def _request(**kw: Any) -> CheckRequest:
    fields: dict[str, Any] = dict(
        program="dibao",
        purpose="dibao",
        legal_basis="SAR-2014-art-12",
        case_id="C-1",
        approval_ref=STANDING_REF,
        mode="plaintext",
        pseudonyms=SUBJECTS,
    )
    fields.update(kw)
    return CheckRequest(**fields)


def run(service: CheckService, request: CheckRequest, principal: Principal = GOLD) -> CheckOutcome:
    return asyncio.run(service.run(principal, request))


def test_plaintext_check_agrees_with_the_oracle_and_logs_every_step(programs: ProgramRegistry) -> None:
    service, nodes, policy, auditor = _service(programs)
    outcome = run(service, _request())
    assert isinstance(outcome, CheckOutcome) and outcome.request_id == "req-fixed"
    expected = oracle(programs.get("dibao"), SUBJECTS)
    assert {c.criterion: list(c.passes or ()) for c in outcome.criteria} == expected
    assert any(not all(v) for v in expected.values()) and any(any(v) for v in expected.values())
    assert (outcome.view, outcome.shuffled, outcome.policy_ids, outcome.policy_set_hash) == (
        "per_criterion", False, ("p-1",), HASH_1)  # fmt: skip
    [(requests, deadline)] = nodes.calls
    assert sorted(requests) == ["civil_affairs", "household", "hrss", "tax"] and deadline == service.deadline_s
    assert auditor.kinds() == ["policy_decision"] + ["node_response"] * 4 + ["result"]
    decision, *answers, result = auditor.events
    assert decision["decision"] == "allow" and decision["subjects"] == list(SUBJECTS)
    assert [a["node"] for a in answers] == ["civil_affairs", "household", "hrss", "tax"]
    assert outcome.nodes["tax"].node_audit_index == 103 and answers[3]["node_audit_index"] == 103
    assert answers[3]["response_sha256"] == outcome.nodes["tax"].response_sha256
    assert "subjects" not in result and result["subject_count"] == 6 and result["nodes"] == tuple(sorted(requests))
    assert "approval_ref" in decision and "consent_ref" not in decision  # empty optional fields are dropped
    assert set(outcome.timings_ms) == {"policy", "fanout", "combine", "total"}
    assert len(policy.asked) == 1 and policy.asked[0].pseudonyms == SUBJECTS


def _signs(keys: Any, outcome: Any, n: int) -> dict[str, list[bool]]:
    """Per criterion, the requester's decrypted signs (one packed ciphertext or one per criterion)."""
    if outcome.packed:
        shared = keys.decrypt_signs(outcome.packed[0], n * (max(v.block for v in outcome.criteria) + 1))
        return {v.criterion: list(shared[v.block * n : (v.block + 1) * n]) for v in outcome.criteria}
    return {v.criterion: list(keys.decrypt_signs(v.ciphertexts[0], n)) for v in outcome.criteria}


def test_he_check_masks_and_the_requester_decrypts_the_oracle(programs: ProgramRegistry, requester_keys: Any) -> None:
    service, nodes, _, auditor = _service(programs)
    outcome = run(service, _request(mode="he", public_context=requester_keys.public_context))
    expected = oracle(programs.get("dibao"), SUBJECTS)
    # A small batch: every criterion in one ciphertext, one slot block each.
    assert len(outcome.packed) == 1 and [v.block for v in outcome.criteria] == [0, 1, 2]
    assert all(v.passes is None and not v.ciphertexts for v in outcome.criteria)
    assert _signs(requester_keys, outcome, len(SUBJECTS)) == expected
    masked = requester_keys.decrypt_masked(outcome.packed[0], 3 * len(SUBJECTS))
    assert not set(masked.tolist()) & {0, 1, -1}  # masked: no raw differences leak
    assert auditor.events[-1]["context_sha256"] == PublicContext(requester_keys.public_context).fingerprint
    # The nodes get the context's fingerprint, never its bytes (the fan-out attaches them on request).
    [(requests, _)] = nodes.calls
    ref = PublicContext(requester_keys.public_context).ref
    assert all(r.context_fingerprint == ref and not r.public_context for r in requests.values())


def test_small_checks_after_the_first_get_padded_values_from_the_nodes_not_ciphertexts(
    programs: ProgramRegistry, requester_keys: Any
) -> None:
    """One-time pads (exchange/pads.py): the first small check opens a batch (each node sends its
    pad ciphertexts), the next ones take the following windows and get x - rho only; same verdicts."""
    service, nodes, _, auditor = _service(programs)
    expected = oracle(programs.get("dibao"), SUBJECTS)
    n, k = len(SUBJECTS), 3
    outcomes = [run(service, _request(mode="he", public_context=requester_keys.public_context)) for _ in range(3)]
    for i, outcome in enumerate(outcomes):
        assert [v.block for v in outcome.criteria] == [i * k + b for b in range(k)]
        assert _signs(requester_keys, outcome, n) == expected
    first, *later = [requests for requests, _ in nodes.calls]
    assert all(r.pad_open and r.pad_offset == 0 for r in first.values())
    batch = next(iter(first.values())).pad_batch
    for i, requests in enumerate(later, start=1):
        assert all(r.pad_batch == batch and not r.pad_open and r.pad_offset == i * n * k for r in requests.values())
    assert outcomes[1].node_bytes < outcomes[0].node_bytes / 50  # no ciphertext after the first
    # Each result's audit entry names its batch, window and the pads it was computed with.
    results = [AuditRecord.from_event(e) for e in auditor.events if e["kind"] == "result"]
    assert [r.metadata["pad_offset"] for r in results] == [0, n * k, 2 * n * k]
    assert {r.metadata["pad_batch"] for r in results} == {batch.hex()}
    assert len({r.digests["pads"] for r in results}) == 1 and len(results[0].digests["pads"]) == 5


def test_without_pads_every_small_check_gets_fresh_node_ciphertexts(
    programs: ProgramRegistry, requester_keys: Any
) -> None:
    """`one_time_pads = false`: packed as before, each check's criteria in blocks 0..k-1."""
    service, nodes, _, _ = _service(programs, pads=None)
    for _ in range(2):
        outcome = run(service, _request(mode="he", public_context=requester_keys.public_context))
        assert [v.block for v in outcome.criteria] == [0, 1, 2]
        assert _signs(requester_keys, outcome, len(SUBJECTS)) == oracle(programs.get("dibao"), SUBJECTS)
    assert all(not r.pad_batch and r.replicas == 3 for requests, _ in nodes.calls for r in requests.values())


def test_a_node_that_predates_pads_is_named_with_what_to_do(programs: ProgramRegistry, requester_keys: Any) -> None:
    """A node not yet upgraded ignores the pad fields and answers with fresh ciphertexts."""

    def old_node(agency: str, response: node_pb2.EncryptResponse) -> None:
        if agency == "hrss":
            for element in response.elements:
                del element.padded_values[:]
                element.ClearField("pad_ciphertext")
                element.ciphertexts.append(b"ciphertext")

    service, _, _, _ = _service(programs, nodes=FakeNodes(garble=old_node))
    with pytest.raises(NodeProtocolError, match=r"predates one-time pads.*one_time_pads = false") as info:
        run(service, _request(mode="he", public_context=requester_keys.public_context))
    assert info.value.agency == "hrss"


def test_a_node_that_lost_its_pad_batch_gets_a_new_one_and_the_check_answers(
    programs: ProgramRegistry, requester_keys: Any
) -> None:
    service, nodes, _, _ = _service(programs)
    run(service, _request(mode="he", public_context=requester_keys.public_context))
    nodes.honest.books.pop("tax")  # the tax node restarted: its batches are gone
    outcome = run(service, _request(mode="he", public_context=requester_keys.public_context))
    assert _signs(requester_keys, outcome, len(SUBJECTS)) == oracle(programs.get("dibao"), SUBJECTS)
    _, lost, reopened = [requests for requests, _ in nodes.calls]
    assert not any(r.pad_open for r in lost.values()) and all(r.pad_open for r in reopened.values())
    assert [v.block for v in outcome.criteria] == [0, 1, 2]


def test_checks_arriving_while_a_batch_opens_use_it_once_it_is_open(
    programs: ProgramRegistry, requester_keys: Any
) -> None:
    service, nodes, _, _ = _service(programs, nodes=FakeNodes(delay_s=0.05))
    request = _request(mode="he", public_context=requester_keys.public_context)

    async def together() -> list[CheckOutcome]:
        return list(await asyncio.gather(*(service.run(GOLD, request) for _ in range(4))))

    outcomes = asyncio.run(together())
    expected = oracle(programs.get("dibao"), SUBJECTS)
    assert all(_signs(requester_keys, o, len(SUBJECTS)) == expected for o in outcomes)
    assert sorted(o.criteria[0].block for o in outcomes) == [0, 3, 6, 9]
    assert sum(r.pad_open for requests, _ in nodes.calls for r in requests.values()) == len(nodes.calls[0][0])


def test_cohort_view_shuffles_subjects_and_uses_a_fresh_epoch(programs: ProgramRegistry, requester_keys: Any) -> None:
    rng = FixedRandomness()
    policy = FakePolicy(PolicyOutcome("cohort", ("p-2",), HASH_1))
    service, nodes, _, auditor = _service(programs, policy=policy, randomness=rng)
    outcome = run(service, _request(mode="he", public_context=requester_keys.public_context))
    assert outcome.shuffled and outcome.view == "cohort" and rng.epochs == 1
    dibao = programs.get("dibao")
    # one fan-out per criterion, each with only that criterion's elements, in its own order
    assert len(nodes.calls) == len(dibao.criteria)
    for (requests, _), criterion in zip(nodes.calls, dibao.criteria, strict=True):
        asked = sorted(q.element for r in requests.values() for q in r.elements)
        assert asked == sorted(t.element for t in criterion.terms)
        for request in requests.values():
            assert list(request.pseudonyms) == list(reversed(SUBJECTS))  # the order only the gateway knows
            assert request.replicas == 0  # never packed: a shared ciphertext would line a person's criteria up
    assert not outcome.packed
    expected = oracle(dibao, tuple(reversed(SUBJECTS)))
    for verdict in outcome.criteria:
        signs = requester_keys.decrypt_signs(verdict.ciphertexts[0], len(SUBJECTS))
        assert list(signs) == expected[verdict.criterion]
    # randomized response with the default epsilon per criterion, drawn once per criterion
    assert outcome.privacy is not None and outcome.privacy.epsilon_per_query == 1.0 * len(dibao.criteria)
    assert rng.flip_calls == [(len(SUBJECTS), outcome.privacy.flip_probability)] * len(dibao.criteria)
    answers = [e for e in auditor.events if e["kind"] == "node_response"]
    assert {(a["node"], a["criterion"]) for a in answers} == {
        (t.element.split(".")[0], c.id) for c in dibao.criteria for t in c.terms
    }
    assert auditor.events[-1]["epsilon"] == f"{outcome.privacy.epsilon_per_query:g}" == "3"


def test_cohort_view_flipped_slots_decrypt_to_the_opposite_verdict_exactly(
    programs: ProgramRegistry, requester_keys: Any
) -> None:
    """Randomized response at the gateway: a flipped slot's sign is the exact opposite verdict,
    also at the +-1-unit boundaries (incomes summing to 1100 = the threshold and to 1101 in VALUES)."""
    rng = FixedRandomness(flip=True)
    service, _, _, _ = _service(programs, policy=FakePolicy(PolicyOutcome("cohort", ("p-2",), HASH_1)), randomness=rng)
    outcome = run(service, _request(mode="he", public_context=requester_keys.public_context))
    expected = oracle(programs.get("dibao"), tuple(reversed(SUBJECTS)))
    for verdict in outcome.criteria:
        signs = requester_keys.decrypt_signs(verdict.ciphertexts[0], len(SUBJECTS))
        assert [not x for x in signs] == expected[verdict.criterion]


def test_policy_denied_is_logged_and_nothing_is_asked_of_the_nodes(programs: ProgramRegistry) -> None:
    refusal = PolicyDenied("access denied: no permit", reasons=["no permit matched"], policy_set_hash=HASH_2)
    service, nodes, _, auditor = _service(programs, policy=FakePolicy(refuse=refusal))
    with pytest.raises(PolicyDenied, match="no permit"):
        run(service, _request())
    assert nodes.calls == []
    [denial] = auditor.events
    assert (denial["kind"], denial["decision"], denial["reasons"], denial["policy_set_hash"]) == (
        "policy_decision", "deny", ("no permit matched",), HASH_2)  # fmt: skip


def test_a_refusal_longer_than_the_audit_bound_is_recorded_cut_not_lost(programs: ProgramRegistry) -> None:
    """The requester gets the whole message; the audit record keeps its first 256 characters and
    still validates (a longer one failed the record, and the refusal with it)."""
    long = "silver: " + "x" * 400
    service, _, _, auditor = _service(programs, policy=FakePolicy(refuse=PolicyDenied(long)))
    with pytest.raises(PolicyDenied) as refused:
        run(service, _request())
    assert refused.value.message == long
    [denial] = auditor.events
    [reason] = denial["reasons"]
    assert len(reason) == 256 and reason.endswith("…") and long.startswith(reason[:-1])
    AuditRecord.from_event(denial)


def test_purpose_and_requester_are_checked_before_the_decision_point(programs: ProgramRegistry) -> None:
    service, nodes, policy, auditor = _service(programs)
    with pytest.raises(PolicyDenied, match="not a purpose of program 'dibao'"):
        run(service, _request(purpose="marketing"))
    with pytest.raises(PolicyDenied, match="agency 'tax' may not request"):
        run(service, _request(), Principal("tax-clerk", "tax", "caseworker", "gold"))
    assert policy.asked == [] and nodes.calls == []
    assert [e["decision"] for e in auditor.events] == ["deny", "deny"]


def _requesters(key: Any) -> dict[str, RequesterKey]:
    signer = Signer.of(GOLD.user, base64.b64encode(key.public_raw).decode())
    return {signer.key_id: RequesterKey(signer, GOLD.user, GOLD.agency)}


def _signed(key: Any, request: CheckRequest, now: float) -> CheckRequest:
    question = Question.of(GOLD.user, GOLD.agency, vars(request), "")
    statement = sign_check(key, question, datetime.fromtimestamp(now, UTC))
    return dataclasses.replace(request, requester_statement=statement)


def test_requester_statements_are_verified_before_the_decision_point_and_forwarded(programs: ProgramRegistry) -> None:
    """An unsigned or mis-signed check never reaches the decision point (nothing reserved, nothing
    asked of the nodes, the refusal audited); a signed one goes to every node with its statement."""
    key = SigningKey.generate("civil_affairs", "requester")
    service, nodes, policy, auditor = _service(programs, requesters=lambda: _requesters(key))
    with pytest.raises(PolicyDenied, match="carries no requester statement"):
        run(service, _request())
    signed = _signed(key, _request(), 1_780_000_000.0)
    with pytest.raises(PolicyDenied, match="signed for another case id"):
        run(service, dataclasses.replace(signed, case_id="C-2"))
    assert policy.asked == [] and nodes.calls == []
    assert [e["decision"] for e in auditor.events] == ["deny", "deny"]
    run(service, signed)
    [(sent, _)] = nodes.calls
    assert {r.context.requester_statement for r in sent.values()} == {signed.requester_statement}


class RefusingBudget:
    """The probing-budget port of the real decision point, already used up for these subjects."""

    def __init__(self) -> None:
        self.asked: list[BudgetRule] = []

    def reserve(
        self, subjects: Any, program: str, agency: str, rule: BudgetRule, now: datetime | None = None
    ) -> object:
        self.asked.append(rule)
        raise BudgetExhausted("probing budget exhausted for 6 subjects", retry_after_s=3600, rule=rule.policy_id)

    def commit(self, reservation: str) -> bool:
        raise AssertionError("nothing was reserved")

    def release(self, reservation: str) -> bool:
        raise AssertionError("nothing was reserved")


def test_budget_exhausted_through_the_real_decision_point(programs: ProgramRegistry, tmp_path: Path) -> None:
    budgets = RefusingBudget()
    approvals = standing_registry(tmp_path / "approvals.db")
    authorizer = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR), budgets=budgets, approvals=approvals, clock=lambda: DAYTIME
    )
    service, nodes, _, auditor = _service(programs, policy=authorizer)
    with pytest.raises(BudgetExhausted) as info:
        run(service, _request(approval_ref=STANDING_REF))
    assert info.value.http_status == 429 and info.value.details["retry_after_s"] == 3600
    assert len(budgets.asked) == 1 and nodes.calls == []
    [denial] = auditor.events
    assert denial["decision"] == "deny" and denial["reason"] == "budget_exhausted"


def test_malformed_requests_spend_no_budget(programs: ProgramRegistry) -> None:
    service, nodes, policy, _ = _service(programs, max_subjects=5)
    with pytest.raises(PayloadTooLarge, match="6 subjects exceed the limit of 5"):
        run(service, _request())
    with pytest.raises(InvalidInput, match="needs the requester's context_fingerprint"):
        run(service, _request(mode="he", pseudonyms=SUBJECTS[:2]))
    service.allow_plaintext_mode = False
    service.max_subjects = 100
    with pytest.raises(PolicyDenied, match="plaintext exchange mode is disabled"):
        run(service, _request())
    assert policy.asked == [] and nodes.calls == []


def test_a_node_down_fails_the_whole_check_naming_the_agency(programs: ProgramRegistry) -> None:
    nodes = FakeNodes(fail=NodeUnavailable("hrss", "unreachable (connection refused)"))
    service, _, _, auditor = _service(programs, nodes=nodes)
    with pytest.raises(NodeUnavailable, match="agency 'hrss'") as info:
        run(service, _request())
    assert info.value.http_status == 503
    assert auditor.kinds() == ["policy_decision", "fanout_call"]  # no node_response, no result
    assert (auditor.events[1]["node"], auditor.events[1]["error"]) == ("hrss", "node_unavailable")


def test_a_node_past_the_deadline_fails_the_check(programs: ProgramRegistry) -> None:
    nodes = FakeNodes(fail=NodeTimeout("household", "did not answer before the deadline"))
    service, _, _, auditor = _service(programs, nodes=nodes, deadline_s=0.25)
    with pytest.raises(NodeTimeout, match="agency 'household'"):
        run(service, _request())
    assert nodes.calls[0][1] == 0.25  # the service hands its deadline to the fan-out
    assert auditor.kinds() == ["policy_decision", "fanout_call"]


def _wrong_request_id(agency: str, response: node_pb2.EncryptResponse) -> None:
    if agency == "tax":
        response.request_id = "another-request"


def _impersonates(agency: str, response: node_pb2.EncryptResponse) -> None:
    if agency == "hrss":
        response.agency = "tax"


def _short_values(agency: str, response: node_pb2.EncryptResponse) -> None:
    if agency == "household":
        del response.elements[0].plain_values[-1]


def _other_element(agency: str, response: node_pb2.EncryptResponse) -> None:
    if agency == "civil_affairs":
        response.elements[0].element = "civil_affairs.other"


def _unclamped(agency: str, response: node_pb2.EncryptResponse) -> None:
    """A node that predates clamping: whole values, nothing echoed (the masks' span could wrap)."""
    if agency == "tax":
        response.elements[0].ClearField("clamped_at")


@pytest.mark.parametrize(
    ("garble", "agency", "match"),
    [
        (_unclamped, "tax", r"did not clamp 'tax\.monthly_income' to \[,1101\] as asked.*upgrade it"),
        (_wrong_request_id, "tax", "answered another request"),
        (_impersonates, "hrss", "answered as agency 'tax'"),
        (_short_values, "household", "sent 5 values"),
        (_other_element, "civil_affairs", "other data elements than asked"),
    ],
)
def test_a_garbled_answer_fails_the_check_without_a_verdict(
    programs: ProgramRegistry, garble: Any, agency: str, match: str
) -> None:
    service, _, _, auditor = _service(programs, nodes=FakeNodes(garble=garble))
    with pytest.raises(NodeProtocolError, match=match) as info:
        run(service, _request())
    assert info.value.agency == agency and info.value.http_status == 502
    assert "result" not in auditor.kinds()


def _bad_ciphertext(agency: str, response: node_pb2.EncryptResponse) -> None:
    """A garbled ciphertext: the pad a small batch's node opens its batch with, else a chunk."""
    if agency == "tax":
        blob = b"\x00" * 64
        element = response.elements[0]
        if element.pad_ciphertext:
            element.pad_ciphertext, element.pad_ciphertext_sha256 = blob, hashlib.sha256(blob).digest()
        else:
            element.ciphertexts[0] = blob
            element.ciphertext_sha256[0] = hashlib.sha256(blob).digest()


def _bad_digest(agency: str, response: node_pb2.EncryptResponse) -> None:
    if agency == "hrss":
        element = response.elements[0]
        if element.pad_ciphertext:
            element.pad_ciphertext_sha256 = b"\x00" * 32
        else:
            element.ciphertext_sha256[0] = b"\x00" * 32


@pytest.mark.parametrize(
    ("garble", "agency", "match"),
    [(_bad_ciphertext, "tax", "invalid (pad )?ciphertext"), (_bad_digest, "hrss", "digest mismatch")],
)
@pytest.mark.parametrize("pads", ["pads", "no pads"])
def test_a_garbled_ciphertext_fails_the_check(
    programs: ProgramRegistry, requester_keys: Any, garble: Any, agency: str, match: str, pads: str
) -> None:
    """A garbled pad (one-time pads, the default) or a garbled fresh ciphertext (`one_time_pads = false`)."""
    kw: dict[str, Any] = {} if pads == "pads" else {"pads": None}
    service, _, _, auditor = _service(programs, nodes=FakeNodes(garble=garble), **kw)
    with pytest.raises(NodeProtocolError, match=match) as info:
        run(service, _request(mode="he", public_context=requester_keys.public_context))
    assert info.value.agency == agency and "result" not in auditor.kinds()


def test_plaintext_baseline_serves_the_per_criterion_view_only(programs: ProgramRegistry) -> None:
    policy = FakePolicy(PolicyOutcome("overall", (), ""))
    service, _, _, auditor = _service(programs, policy=policy)
    with pytest.raises(PolicyDenied, match="per-criterion view only"):
        run(service, _request())
    assert "result" not in auditor.kinds()


def test_rest_translation_round_trip() -> None:
    from gateway.models import CheckRequest as RestRequest
    from gateway.models import from_domain, to_domain

    body = RestRequest(
        program="dibao", purpose="dibao", legal_basis="L-1", case_id="C-1", pseudonyms=list(SUBJECTS[:2]),
        public_context=base64.b64encode(b"ctx").decode(),
    )  # fmt: skip
    request = to_domain(body)
    assert request.public_context == b"ctx" and request.pseudonyms == SUBJECTS[:2] and request.mode == "he"
    with pytest.raises(InvalidInput, match="not valid base64"):
        to_domain(body.model_copy(update={"public_context": "%%%"}))
    from exchange.types import CriterionVerdict, NodeReceipt

    outcome = CheckOutcome(
        request_id="r", program="dibao", program_version="1", mode="he", view="overall", subjects=2,
        chunk_size=SLOTS, shuffled=False, criteria=(CriterionVerdict("position_1", "hidden", (b"\x01\x02",)),),
        policy_ids=("p",), policy_set_hash="h", nodes={"tax": NodeReceipt(1, "ab", "cd")}, node_bytes=9,
    )  # fmt: skip
    rest = from_domain(outcome)
    assert rest.criteria[0].ciphertexts == [base64.b64encode(b"\x01\x02").decode()] and rest.criteria[0].passes is None
    assert rest.nodes["tax"] == {"node_audit_index": 1, "node_audit_leaf_hash": "ab", "response_sha256": "cd"}
    assert rest.policy == {"policy_ids": ["p"], "policy_set_hash": "h"}
