"""The node's own decision point: the provider decides again for its own data elements (X-Road)."""

from __future__ import annotations

from pathlib import Path

from nodes.service import Authorizer
from policies.decision import DEFAULT_POLICY_DIR, node_decision
from policies.reload import PolicyReloader
from protos.xgate.v1 import node_pb2


def node_authorizer(agency: str, policy_dir: Path | None) -> Authorizer:
    """Refuse (PolicyDenied, with the policies' reasons) unless this node's policy allows."""
    reloader = PolicyReloader(policy_dir or DEFAULT_POLICY_DIR).start()

    def authorize(request: node_pb2.EncryptRequest) -> None:
        ctx = request.context
        node_decision(
            reloader,
            node_agency=agency,
            user=ctx.requester_user,
            requesting_agency=ctx.requester_agency,
            program=ctx.program_id,
            elements=[q.element for q in request.elements],
            purpose=ctx.purpose,
            legal_basis=ctx.legal_basis,
            case_id=ctx.case_id,
            consent_ref=ctx.consent_ref,
            approval_ref=ctx.approval_ref,
        ).raise_if_denied()

    return authorize
