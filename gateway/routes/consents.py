"""REST edge of the consent registry: register, read and revoke consent artefacts.

Consent comes from the data subject, not the requester. Who may do what:

* register (POST): only a consent manager (role `consent_manager`), and only an artefact signed
  with a consent manager key registered in the policy directory (`consent_managers.toml`). A
  caseworker, analyst or officer gets 403: requesters never create consents.
* read one (GET by reference): the authorised agency (status only, by the reference it holds),
  admins, security officers, consent managers.
* list (GET ?subject=): a consent manager, the consents it registered.
* revoke (DELETE): the consent manager that registered it (acting for the subject), or an admin.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.deps import Caller, Consents, ServicesDep
from policies.consent import REF_RE, ConsentRecord, ConsentRegistry
from xgate.errors import InvalidInput, NotFound, PolicyDenied
from xgate.principal import Principal

_IDENT = r"^[a-z][a-z0-9_]{1,63}$"


class Frequency(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uses: int = Field(ge=1, le=10_000)
    per_days: int = Field(ge=1, le=3660)


class ConsentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artefact: str = Field(
        min_length=2, max_length=16 * 1024, description="xgate-consent/1 JSON signed by a registered consent manager"
    )


class ConsentView(BaseModel):
    ref: str
    subject: str
    agency: str
    purpose: str
    valid_from: datetime
    valid_until: datetime
    max_uses: int | None
    frequency: Frequency | None
    uses: int
    revoked_at: datetime | None
    status: Literal["active", "not_yet_valid", "expired", "revoked", "used_up"]
    programs: list[str] = []
    issuer: str = ""


def view_of(record: ConsentRecord, now: datetime) -> ConsentView:
    if record.revoked_at is not None:
        status = "revoked"
    elif now >= record.valid_until:
        status = "expired"
    elif now < record.valid_from:
        status = "not_yet_valid"
    elif record.max_uses is not None and record.uses >= record.max_uses:
        status = "used_up"
    else:
        status = "active"
    frequency = (
        Frequency(uses=record.frequency_uses, per_days=record.frequency_days)
        if record.frequency_uses is not None and record.frequency_days is not None
        else None
    )
    return ConsentView(
        ref=record.ref,
        subject=record.subject,
        agency=record.agency,
        purpose=record.purpose,
        valid_from=record.valid_from,
        valid_until=record.valid_until,
        max_uses=record.max_uses,
        frequency=frequency,
        uses=record.uses,
        revoked_at=record.revoked_at,
        status=status,  # type: ignore[arg-type]
        programs=list(record.programs),
        issuer=record.issuer,
    )


router = APIRouter(prefix="/v1/consents", tags=["consents"])


MANAGER = "consent_manager"


def _check_access(principal: Principal, record: ConsentRecord, revoke: bool) -> None:
    if principal.role == "admin":
        return
    if revoke:
        if principal.role == MANAGER and principal.agency == record.issuer:
            return
        raise PolicyDenied("revoking a consent is reserved to the consent manager acting for the subject")
    if principal.agency == record.agency or principal.role in ("security_officer", MANAGER):
        return
    raise PolicyDenied("reading this consent is reserved to the authorised agency")


def _manager(principal: Principal) -> None:
    if principal.role not in (MANAGER, "admin"):
        raise PolicyDenied(
            "consents come from the data subject: only a consent manager registers them, "
            f"role '{principal.role}' may only read a consent's status by its reference"
        )


def _lookup(registry: ConsentRegistry, ref: str) -> ConsentRecord:
    if not REF_RE.match(ref):
        raise NotFound("no such consent")
    return registry.lookup(ref)


@router.post("", status_code=201)
async def create(body: ConsentCreate, caller: Caller, registry: Consents, services: ServicesDep) -> ConsentView:
    _manager(caller)
    record = registry.register_signed(body.artefact, issuer=caller.agency if caller.role == MANAGER else None)
    return view_of(record, services.clock())


@router.get("")
async def listing(
    caller: Caller, registry: Consents, services: ServicesDep, subject: str | None = None
) -> list[ConsentView]:
    _manager(caller)
    if subject is not None and not re.fullmatch(r"[a-z2-7]{26}", subject):
        raise InvalidInput("subject must be a 26-character pseudonym")
    now = services.clock()
    return [view_of(r, now) for r in registry.issued_by(caller.agency, subject)]


@router.get("/{ref}")
async def read(ref: str, caller: Caller, registry: Consents, services: ServicesDep) -> ConsentView:
    record = _lookup(registry, ref)
    _check_access(caller, record, revoke=False)
    return view_of(record, services.clock())


@router.delete("/{ref}")
async def revoke(ref: str, caller: Caller, registry: Consents, services: ServicesDep) -> ConsentView:
    _check_access(caller, _lookup(registry, ref), revoke=True)
    now = services.clock()
    return view_of(registry.revoke(ref, now), now)
