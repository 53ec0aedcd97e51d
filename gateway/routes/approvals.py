"""REST edge of the approval registry: register, read and revoke signed approvals.

An approval is registered by its approver, never by the requester who will name it:

* register (POST): only role `approver`, and only an artefact signed with that approver's own key
  as registered in the policy directory (`approvers.toml`). Anyone else gets 403.
* read one (GET by reference): the agencies it approves for, admins, security officers, approvers.
* list (GET): an approver, the approvals it registered.
* revoke (DELETE): the approver that registered it, or an admin.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.deps import Approvals, Caller, ServicesDep
from policies.approvals import REF_RE, ApprovalRecord, ApprovalRegistry
from xgate.errors import NotFound, PolicyDenied
from xgate.principal import Principal

APPROVER = "approver"


class ApprovalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artefact: str = Field(
        min_length=2, max_length=16 * 1024, description="xgate-approval/1 JSON signed by its approver"
    )


class ApprovalView(BaseModel):
    ref: str
    approver: str
    approver_role: str
    agencies: list[str]
    programs: list[str]
    datasets: list[str] = []  # training datasets (a training approval names no program)
    case_ids: list[str] | None
    case_id_prefix: str | None
    subjects: int | None  # how many subjects a subject-list approval names (never the list)
    max_subjects: int | None
    uses: int
    valid_from: datetime
    valid_until: datetime
    revoked_at: datetime | None
    status: Literal["active", "not_yet_valid", "expired", "revoked", "used_up"]


def view_of(record: ApprovalRecord, now: datetime) -> ApprovalView:
    body = record.body
    if record.revoked_at is not None:
        status = "revoked"
    elif now >= body.valid_until:
        status = "expired"
    elif now < body.valid_from:
        status = "not_yet_valid"
    elif body.max_subjects is not None and record.uses >= body.max_subjects:
        status = "used_up"
    else:
        status = "active"
    return ApprovalView(
        ref=body.ref,
        approver=body.approver,
        approver_role=body.approver_role,
        agencies=list(body.agencies),
        programs=list(body.programs),
        datasets=list(body.datasets),
        case_ids=list(body.case_ids) if body.case_ids is not None else None,
        case_id_prefix=body.case_id_prefix,
        subjects=len(body.subjects) if body.subjects is not None else None,
        max_subjects=body.max_subjects,
        uses=record.uses,
        valid_from=body.valid_from,
        valid_until=body.valid_until,
        revoked_at=record.revoked_at,
        status=status,  # type: ignore[arg-type]
    )


router = APIRouter(prefix="/v1/approvals", tags=["approvals"])


def _approver(principal: Principal) -> None:
    if principal.role != APPROVER:
        raise PolicyDenied(
            f"approvals are registered by their approver (role '{APPROVER}'), not by role '{principal.role}'"
        )


def _lookup(registry: ApprovalRegistry, ref: str) -> ApprovalRecord:
    if not REF_RE.match(ref):
        raise NotFound("no such approval")
    return registry.lookup(ref)


def _check_access(principal: Principal, record: ApprovalRecord, revoke: bool) -> None:
    if principal.role == "admin":
        return
    if revoke:
        if principal.role == APPROVER and principal.user == record.body.approver:
            return
        raise PolicyDenied("revoking an approval is reserved to its approver")
    if principal.agency in record.body.agencies or principal.role == "security_officer":
        return
    if principal.role == APPROVER and principal.user == record.body.approver:
        return  # its own approvals, whichever agencies they are for; not another approver's case ids
    raise PolicyDenied("reading this approval is reserved to its approver and the agencies it approves for")


@router.post("", status_code=201)
async def create(body: ApprovalCreate, caller: Caller, registry: Approvals, services: ServicesDep) -> ApprovalView:
    _approver(caller)
    record = registry.register_signed(body.artefact, approver=caller.user)
    return view_of(record, services.clock())


@router.get("")
async def listing(caller: Caller, registry: Approvals, services: ServicesDep) -> list[ApprovalView]:
    _approver(caller)
    now = services.clock()
    return [view_of(r, now) for r in registry.issued_by(caller.user)]


@router.get("/{ref}")
async def read(ref: str, caller: Caller, registry: Approvals, services: ServicesDep) -> ApprovalView:
    record = _lookup(registry, ref)
    _check_access(caller, record, revoke=False)
    return view_of(record, services.clock())


@router.delete("/{ref}")
async def revoke(ref: str, caller: Caller, registry: Approvals, services: ServicesDep) -> ApprovalView:
    _check_access(caller, _lookup(registry, ref), revoke=True)
    now = services.clock()
    return view_of(registry.revoke(ref, now), now)
