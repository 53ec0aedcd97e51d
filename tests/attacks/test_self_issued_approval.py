"""Attack (issue 13, item 2): a caseworker approves its own access to core-class data.

The baseline rule only asked for a non-empty approval_ref, so `I-APPROVE-MYSELF` opened the
household register. An approval is now a registered object signed by a registered approver
(policies/approvals.py): the gateway refuses free text, artefacts signed by keys nobody
registered, and registered approvals used outside their scope, and the nodes holding core-class
data check the forwarded signed artefact again.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crypto.artefacts import sign_artefact
from crypto.envelope import SigningKey
from gateway.app import create_app
from gateway.models import CheckRequest
from gateway.services import Services
from nodes.policy import verify_approval
from policies.approvals import APPROVAL_FORMAT, ApprovalRegistry, new_ref
from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer, PolicyEngine
from tests.unit.test_approvals import APPROVER_KEY, APPROVERS, Approvers, _node_request, approval
from tests.unit.test_policy_pdp import DIBAO, GOLD, _request
from tests.unit.test_policy_support import DAYTIME
from xgate.errors import PolicyDenied
from xgate.principal import Principal


@pytest.fixture
def setup(tmp_path: Path) -> tuple[CheckAuthorizer, ApprovalRegistry]:
    registry = ApprovalRegistry(tmp_path / "approvals.db", approvers=APPROVERS)
    engine = PolicyEngine.load(DEFAULT_POLICY_DIR)
    return CheckAuthorizer(engine, approvals=registry, clock=lambda: DAYTIME), registry


def _unchecked(**kw: object) -> CheckRequest:
    """A request as a modified gateway would pass it on: past the REST edge's reference check."""
    valid = _request()
    return CheckRequest.model_construct(**{**valid.model_dump(), **kw})


def test_the_rest_edge_refuses_free_text_naming_the_field() -> None:
    with pytest.raises(ValueError, match="approval_ref must be empty or a registered reference"):
        _request(approval_ref="I-APPROVE-MYSELF")


def test_positive_control_the_old_rule_accepted_any_non_empty_string(setup) -> None:  # type: ignore[no-untyped-def]
    pdp, _ = setup
    # Cedar alone (the rule that was all there was) lets the self-issued text through ...
    decision = pdp.decide_check(
        GOLD, "dibao", [t.element for t in DIBAO.elements()], _unchecked(approval_ref="I-APPROVE-MYSELF"), DAYTIME
    )
    assert decision.allowed
    # ... and so would the old gateway with no approval registry to ask; now that refuses too.
    with pytest.raises(PolicyDenied, match="no approval registry"):
        no_registry = CheckAuthorizer(pdp.engine, clock=lambda: DAYTIME)
        no_registry.authorize_check(GOLD, DIBAO, _unchecked(approval_ref="I-APPROVE-MYSELF"))


def test_free_text_is_refused_with_a_clear_error(setup) -> None:  # type: ignore[no-untyped-def]
    pdp, _ = setup
    with pytest.raises(PolicyDenied, match="approval_ref 'I-APPROVE-MYSELF' names no registered approval"):
        pdp.authorize_check(GOLD, DIBAO, _unchecked(approval_ref="I-APPROVE-MYSELF"))


def test_an_approval_signed_by_an_unregistered_key_is_refused_everywhere(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pdp, registry = setup
    own = SigningKey.generate("cw-zhang", "approver")  # the caseworker's own key, registered nowhere
    forged = sign_artefact({**_body(own.agency), "ref": (ref := new_ref())}, own, fmt=APPROVAL_FORMAT)
    with pytest.raises(PolicyDenied, match="not signed by a registered signer"):
        registry.register_signed(forged)
    with pytest.raises(PolicyDenied, match="names no registered approval"):
        pdp.authorize_check(GOLD, DIBAO, _request(approval_ref=ref))
    # a modified gateway forwarding it anyway: the node holding core-class data refuses
    (tmp_path / "approvers.toml").write_text(
        f'[[approver]]\nname = "ap-test"\nagencies = ["civil_affairs"]\nroles = ["case_supervisor"]\n'
        f'public_key = "{base64.b64encode(APPROVER_KEY.public_raw).decode()}"\n'
    )
    with pytest.raises(PolicyDenied, match="not signed by a registered signer"):
        verify_approval(
            _node_request(forged, ref, ["abcdefghijklmnopqrstuvwxyz"]), Approvers(tmp_path), lambda: DAYTIME
        )
    # nor can the caseworker register anything at the gateway (role approver only)
    caseworker = Principal("cw-zhang", "civil_affairs", "caseworker", "gold")
    app = TestClient(create_app(Services(authenticate=lambda _r: caseworker, approvals=registry)))
    r = app.post("/v1/approvals", json={"artefact": approval()})
    assert r.status_code == 403 and "registered by their approver" in r.json()["message"]


def _body(approver: str) -> dict[str, object]:
    import json

    return dict(json.loads(approval())["body"], approver=approver)


@pytest.mark.parametrize(
    ("change", "request_change", "reason"),
    [
        ({"case_ids": ["C-OTHER"]}, {}, "does not cover case 'C-1'"),
        ({"programs": ["target_discovery"]}, {}, "does not cover program 'dibao'"),
        ({"max_subjects": 2}, {}, "covers at most 2 subjects"),
        ({"agencies": ["hrss"]}, {}, "given to another agency"),
        ({"max_subjects": None, "subjects": ["abcdefghijklmnopqrstuvwxyz"]}, {}, "does not cover every subject"),
    ],
)
def test_a_registered_approval_used_out_of_scope_is_refused(setup, change, request_change, reason) -> None:  # type: ignore[no-untyped-def]
    pdp, registry = setup
    ref = registry.register_signed(approval(**change)).ref
    with pytest.raises(PolicyDenied, match=reason):
        pdp.authorize_check(GOLD, DIBAO, _request(approval_ref=ref, **request_change))
    assert registry.lookup(ref).uses == 0


def test_in_scope_approval_passes_and_is_charged(setup) -> None:  # type: ignore[no-untyped-def]
    pdp, registry = setup
    ref = registry.register_signed(approval(max_subjects=3)).ref
    outcome = pdp.authorize_check(GOLD, DIBAO, _request(approval_ref=ref))
    assert outcome.approval_artefact == registry.artefact(ref)  # forwarded for the nodes to check
    outcome.charge.commit()
    assert registry.lookup(ref).uses == 3
    with pytest.raises(PolicyDenied, match="used up"):
        pdp.authorize_check(GOLD, DIBAO, _request(approval_ref=ref))
