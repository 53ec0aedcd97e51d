"""Attack: the bronze member check as a membership oracle for the household register.

The register node refuses a bronze cohort naming anyone it does not know (the fake-member defence,
test_bronze_fake_members.py). A bronze caseworker who sends 9 people it knows are registered plus
one candidate learns from answered/refused whether the candidate is registered. Node refusals
released the cohort ε and the probing budget (a failure "not the requester's"), so the oracle was
free and unlimited. This refusal answers a question about the request's own subjects, so it is now
charged like an answer: each probe spends the query's ε, and the per-period ε budget ends the
probing after ten.

Real CheckService, CheckAuthorizer with the shipped policy set, CohortPrivacyBudget and
ProbeBudget, and a real register NodeService (`civil_register`); the other agencies answer zeros.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bench.privacy import _random_pseudonym, _register_node
from crypto.he import RequesterKeys
from exchange.service import CheckService
from exchange.types import CheckRequest
from nodes.service import NodeService
from policies.budgets import CohortPrivacyBudget, ProbeBudget
from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
from policies.programs import ProgramRegistry
from protos.xgate.v1 import node_pb2
from tests.honest_answers import HonestAnswers
from tests.unit.test_approvals import STANDING_REF, standing_registry
from tests.unit.test_check_service import MASK_KEY, FakeAuditor
from tests.unit.test_policy_support import DAYTIME
from xgate.errors import BudgetExhausted, NodeRefused, NodeUnavailable, PolicyDenied, XgateError
from xgate.principal import Principal

BRONZE = Principal("ca-caseworker-bronze", "civil_affairs", "caseworker", "bronze")


class Nodes:
    """The real register node; the other agencies answer zeros (their answers do not matter here)."""

    def __init__(self, register: NodeService) -> None:
        self.register = register
        self.honest = HonestAnswers()

    async def encrypt_all(
        self, requests: dict[str, node_pb2.EncryptRequest], deadline_s: float, public_context: bytes = b""
    ) -> dict[str, node_pb2.EncryptResponse]:
        out = {}
        for agency, request in requests.items():
            if agency == "household":
                if public_context and not request.public_context:
                    request.public_context = public_context
                try:
                    out[agency] = self.register.encrypt_values(request)
                except XgateError as exc:  # what gateway/fanout.py makes of the node's PERMISSION_DENIED
                    raise NodeRefused(agency, f"refused: {exc.message}", **exc.details) from None
                continue
            zeros = [0] * len(request.pseudonyms)
            out[agency] = self.honest.answer(agency, request, lambda _, zeros=zeros: zeros, public_context)
        return out


def test_probing_the_register_through_refused_cohorts_is_charged_and_runs_out(
    programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path
) -> None:
    register, registered, _ = _register_node(120, True, 7, tmp_path)
    privacy, budgets = CohortPrivacyBudget(tmp_path / "eps.db"), ProbeBudget(tmp_path / "probe.db")
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR), budgets=budgets, privacy=privacy,
        approvals=standing_registry(tmp_path / "approvals.db"), clock=lambda: DAYTIME,
    )  # fmt: skip
    service = CheckService(
        programs=programs, nodes=Nodes(register), mask_key=MASK_KEY, policy=policy,
        auditor=FakeAuditor(), clock=lambda: DAYTIME.timestamp(),
    )  # fmt: skip
    program = programs.get("target_discovery")
    period = int(DAYTIME.timestamp() // program.epoch_seconds)
    rng = np.random.default_rng(1)

    def probe(cover: list[str], candidate: str) -> str:
        request = CheckRequest(
            program="target_discovery", purpose="target_discovery", legal_basis="SAR-2014-art-12", case_id="C-1",
            approval_ref=STANDING_REF, mode="he", pseudonyms=(*cover, candidate),
            public_context=requester_keys.public_context,
        )  # fmt: skip
        try:
            asyncio.run(service.run(BRONZE, request))
            return "answered"
        except NodeRefused as exc:
            assert "not every member" in exc.message
            return "refused"
        except BudgetExhausted:
            return "out of budget"

    per_query = 3.0  # three criteria at the default 1.0 each
    covers = [registered[9 * i : 9 * i + 9] for i in range(12)]  # fresh cover people: no probing budget runs out
    outcomes = [probe(cover, _random_pseudonym(rng)) for cover in covers]
    assert outcomes[:10] == ["refused"] * 10  # each unknown candidate found out, and paid for
    assert privacy.spent("target_discovery", "civil_affairs", period) == pytest.approx(10 * per_query)
    assert outcomes[10:] == ["out of budget"] * 2  # the period's 30.0 is spent: no more probes
    assert privacy.pending() == 0 and budgets.pending() == 0
    register.store.close()


def test_other_node_failures_still_release_what_was_reserved(
    programs: ProgramRegistry, requester_keys: RequesterKeys, tmp_path: Path
) -> None:
    """Only the member refusal is charged: a node that is down costs the requester nothing."""

    class Down:
        async def encrypt_all(self, *args: object, **kwargs: object) -> dict[str, node_pb2.EncryptResponse]:
            raise NodeUnavailable("household", "unreachable")

    register, registered, _ = _register_node(20, True, 7, tmp_path)
    privacy = CohortPrivacyBudget(tmp_path / "eps.db")
    policy = CheckAuthorizer(
        PolicyEngine.load(DEFAULT_POLICY_DIR), budgets=ProbeBudget(tmp_path / "probe.db"), privacy=privacy,
        approvals=standing_registry(tmp_path / "approvals.db"), clock=lambda: DAYTIME,
    )  # fmt: skip
    service = CheckService(
        programs=programs, nodes=Down(), mask_key=MASK_KEY, policy=policy,
        auditor=FakeAuditor(), clock=lambda: DAYTIME.timestamp(),
    )  # fmt: skip
    request = CheckRequest(
        program="target_discovery", purpose="target_discovery", legal_basis="SAR-2014-art-12", case_id="C-1",
        approval_ref=STANDING_REF, mode="he", pseudonyms=tuple(registered[:10]),
        public_context=requester_keys.public_context,
    )  # fmt: skip
    with pytest.raises(NodeUnavailable):  # raised by the fan-out: after the policy step reserved
        asyncio.run(service.run(BRONZE, request))
    period = int(DAYTIME.timestamp() // programs.get("target_discovery").epoch_seconds)
    assert privacy.spent("target_discovery", "civil_affairs", period) == 0.0
    register.store.close()


def test_the_refusal_reason_survives_the_grpc_edge() -> None:
    """The node's refusal crosses gRPC as PERMISSION_DENIED with its public body: the gateway's
    translation must keep the `refusal` detail the check service charges on."""
    import json

    import grpc

    from exchange.cohort import COHORT_MEMBER_UNKNOWN
    from xgate.grpc_edge import node_error_from_rpc

    refused = PolicyDenied("cohort refused: not every member is a person known to the civil register",
                           refusal=COHORT_MEMBER_UNKNOWN)  # fmt: skip

    class Failed(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.PERMISSION_DENIED

        def details(self) -> str:
            return json.dumps(refused.to_public())

    error = node_error_from_rpc("household", Failed())
    assert isinstance(error, NodeRefused) and error.details["refusal"] == COHORT_MEMBER_UNKNOWN
