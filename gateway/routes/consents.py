"""REST edge of the consent registry: register, read and revoke consent artefacts.

Who may do what: any authenticated principal may record a consent the subject gave (the
citizen-service desk of the authorised agency, in practice); only the authorised agency, an
admin or a security officer may read one; only the authorised agency or an admin may revoke.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from gateway.deps import Caller, Consents, ServicesDep
from policies.consent import REF_RE, ConsentRecord, ConsentRegistry
from xgate.errors import NotFound, PolicyDenied
from xgate.principal import Principal

_IDENT = r"^[a-z][a-z0-9_]{1,63}$"


class Frequency(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uses: int = Field(ge=1, le=10_000)
    per_days: int = Field(ge=1, le=3660)


class ConsentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(pattern=r"^[a-z2-7]{26}$", description="subject pseudonym (never a national id)")
    agency: str = Field(pattern=_IDENT, description="the agency the subject authorises")
    purpose: str = Field(pattern=_IDENT)
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    max_uses: int | None = Field(default=None, ge=1, le=10_000, description="1 = one-time consent")
    frequency: Frequency | None = None

    @model_validator(mode="after")
    def _period(self) -> ConsentCreate:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


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
    )


router = APIRouter(prefix="/v1/consents", tags=["consents"])


def _check_access(principal: Principal, record: ConsentRecord, revoke: bool) -> None:
    if principal.agency == record.agency or principal.role == "admin":
        return
    if not revoke and principal.role == "security_officer":
        return
    raise PolicyDenied(f"{'revoking' if revoke else 'reading'} this consent is reserved to the authorised agency")


def _lookup(registry: ConsentRegistry, ref: str) -> ConsentRecord:
    if not REF_RE.match(ref):
        raise NotFound("no such consent")
    return registry.lookup(ref)


@router.post("", status_code=201)
async def create(body: ConsentCreate, caller: Caller, registry: Consents, services: ServicesDep) -> ConsentView:
    ref = registry.register(
        subject=body.subject,
        agency=body.agency,
        purpose=body.purpose,
        valid_from=body.valid_from,
        valid_until=body.valid_until,
        max_uses=body.max_uses,
        frequency=(body.frequency.uses, body.frequency.per_days) if body.frequency else None,
    )
    return view_of(registry.lookup(ref), services.clock())


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
