"""The node's own decision point: the provider decides again for its own data elements (X-Road)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from crypto.he import context_fingerprint
from nodes.service import Authorizer
from policies.approvals import Approvers, check_approval_artefact
from policies.check_statements import Question, verify_statement
from policies.consent import ConsentManagers, check_artefact
from policies.decision import DEFAULT_POLICY_DIR, current, node_decision
from policies.loader import UserEntry
from policies.reload import PolicyReloader
from policies.requesters import Requesters
from protos.xgate.v1 import node_pb2
from xgate.errors import PolicyDenied


def verify_consent(request: node_pb2.EncryptRequest, managers: ConsentManagers, clock: Callable[[], datetime]) -> None:
    """The provider checks the consent itself: signed by a registered manager, in scope now."""
    ctx = request.context
    if not ctx.consent_ref:
        return
    if len(request.pseudonyms) != 1:
        raise PolicyDenied("a consent covers one subject: consent-based requests name exactly one")
    check_artefact(
        ctx.consent_artefact,
        managers.current(),
        ref=ctx.consent_ref,
        subject=request.pseudonyms[0],
        agency=ctx.requester_agency,
        purpose=ctx.purpose,
        program=ctx.program_id,
        now=clock(),
    )


def verify_approval(request: node_pb2.EncryptRequest, approvers: Approvers, clock: Callable[[], datetime]) -> None:
    """The provider checks a named approval itself: signed by a registered approver, in scope now.

    Every node checks an approval_ref it is sent; the baseline policy makes one necessary for
    core-class data, so the nodes holding core-class data always check one.
    """
    ctx = request.context
    if not ctx.approval_ref:
        return
    check_approval_artefact(
        ctx.approval_artefact,
        approvers.current(),
        ref=ctx.approval_ref,
        agency=ctx.requester_agency,
        program=ctx.program_id,
        case_id=ctx.case_id,
        subjects=list(request.pseudonyms),
        now=clock(),
    )


def verify_requester(request: node_pb2.EncryptRequest, requesters: Requesters, clock: Callable[[], datetime]) -> None:
    """The requesting user signed this very question, for the HE context this node is about to
    encrypt under and for exactly these subjects (THREAT_MODEL I1b): the gateway cannot name a
    context of its own, nor widen the question."""
    ctx = request.context
    # NodeService checked public_context against context_fingerprint when both are set.
    context = context_fingerprint(request.public_context) if request.public_context else request.context_fingerprint
    fingerprint = context if request.mode == node_pb2.EXCHANGE_MODE_HE else ""
    verify_statement(ctx.requester_statement, requesters.usable(), Question.of_request(request, fingerprint), clock())


def verify_registered_tier(request: node_pb2.EncryptRequest, registered: UserEntry | None) -> None:
    """The role and tier the gateway states are the user's own in the CA-signed principals registry:
    the tier decides, for one, whether the civil register checks a cohort's members, and that
    refusal is a bit about the subjects the gateway could otherwise ask for at will. An unregistered
    user is refused by the policy decision that follows."""
    ctx = request.context
    if registered is not None and (registered.role, registered.tier) != (ctx.requester_role, ctx.requester_tier):
        raise PolicyDenied("the request states another role or tier than the principals registry gives its user")


def node_authorizer(
    agency: str,
    policy_dir: Path | None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    signed_by: Path | None = None,
) -> Authorizer:
    """Refuse (PolicyDenied, with the policies' reasons) unless this node's policy allows.

    signed_by: the federation CA certificate (`signed_policies = true`): the policy set, its reloads
    and the signer registries are taken only from a CA-signed bundle, each reload a newer one."""
    directory = policy_dir or DEFAULT_POLICY_DIR
    reloader = PolicyReloader(directory, ca_cert=signed_by).start()
    bundle = (lambda: reloader.bundle) if signed_by is not None else None
    managers = ConsentManagers(directory, bundle)
    approvers = Approvers(directory, bundle)
    requesters = Requesters(directory, bundle)
    requesters.warn_if_none()

    def authorize(request: node_pb2.EncryptRequest) -> None:
        ctx = request.context
        now = clock()  # one time for every part of the decision (the policies' office hours too)
        verify_requester(request, requesters, lambda: now)
        verify_registered_tier(request, current(reloader).principal(ctx.requester_user))
        verify_consent(request, managers, lambda: now)
        verify_approval(request, approvers, lambda: now)
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
            at=now,
        ).raise_if_denied()

    return authorize
