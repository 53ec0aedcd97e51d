"""The routes' dependencies as Annotated types: who is calling, and the services a route needs.

    @router.get("/v1/audit/entries")
    def entries(who: Auditor, log: AuditLogDep) -> ...

Authentication runs before the body is read or validated; a refusal raises an XgateError that
the app's handler turns into the public JSON body (gateway/app.py).
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from fastapi import Depends, Request

from audit.checkpoints import NoteVerifier
from audit.read import AuditReader
from audit.store import AuditLog
from gateway.admission_control import AdmissionController
from gateway.audit import REQUEST_ID
from gateway.checks import CheckCoordinator
from gateway.contexts import ContextStore
from gateway.idempotency import IdempotencyStore
from gateway.services import Services
from gateway.training_service import TrainingService
from policies.approvals import ApprovalRegistry
from policies.consent import ConsentRegistry
from policies.types import AUDIT_LOG, AccessRequest
from xgate.errors import AuditUnconfigured, ConfigError, PolicyDenied, StoreUnavailable, TrainingUnavailable
from xgate.principal import Principal

OFFICER_ROLES = ("security_officer", "admin")  # the console's operator pages


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_caller(request: Request, services: ServicesDep) -> Principal:
    result = services.authenticate(request)
    who: Principal = await result if inspect.isawaitable(result) else result
    request.state.principal = who  # the request log names the caller
    return who


Caller = Annotated[Principal, Depends(get_caller)]


async def get_officer(who: Caller) -> Principal:
    if who.role not in OFFICER_ROLES:
        raise PolicyDenied("reserved to security officers and administrators", role=who.role)
    return who


Officer = Annotated[Principal, Depends(get_officer)]


def policy_engine(services: Services) -> Any:
    """The PolicyEngine behind a CheckAuthorizer, PolicyReloader or engine."""
    source = services.policy
    while hasattr(source, "engine"):
        source = source.engine
    return source


async def get_engine(services: ServicesDep) -> Any:
    if services.policy is None:
        raise ConfigError("this gateway has no policy set configured")
    return policy_engine(services)


Engine = Annotated[Any, Depends(get_engine)]


async def get_auditor(who: Caller, engine: Engine) -> Principal:
    # Reading the log is a policy decision alone (baseline: security officers, security_audit).
    request = AccessRequest(
        principal=who.user,
        action="read_audit",
        resource=AUDIT_LOG,
        purpose="security_audit",
        requesting_agency=who.agency,
    )
    engine.decide(request).raise_if_denied()
    return who


Auditor = Annotated[Principal, Depends(get_auditor)]


async def get_audit_log(services: ServicesDep) -> AuditLog:
    if services.audit_log is None:
        raise AuditUnconfigured("this gateway has no audit log configured (gateway.audit_db)")
    return services.audit_log


AuditLogDep = Annotated[AuditLog, Depends(get_audit_log)]


async def get_audit_reader(log: AuditLogDep, services: ServicesDep) -> AuditReader:
    verifier = None if services.public_key is None else NoteVerifier(log.origin, services.public_key)
    return AuditReader(log, verifier, services.witnesses, request_id=REQUEST_ID.get())


Reader = Annotated[AuditReader, Depends(get_audit_reader)]


async def get_coordinator(services: ServicesDep) -> CheckCoordinator:
    if services.coordinator is None:
        raise ConfigError("this gateway has no check coordinator")
    return services.coordinator


Coordinator = Annotated[CheckCoordinator, Depends(get_coordinator)]


async def get_consents(services: ServicesDep) -> ConsentRegistry:
    if services.consents is None:
        raise ConfigError("this gateway has no consent registry")
    return services.consents


Consents = Annotated[ConsentRegistry, Depends(get_consents)]


async def get_approvals(services: ServicesDep) -> ApprovalRegistry:
    if services.approvals is None:
        raise ConfigError("this gateway has no approval registry")
    return services.approvals


Approvals = Annotated[ApprovalRegistry, Depends(get_approvals)]


async def get_training(services: ServicesDep) -> TrainingService:
    if services.training is None:
        raise TrainingUnavailable("this gateway has no [training] section: federated training is off")
    return services.training


Training = Annotated[TrainingService, Depends(get_training)]


async def get_admission(services: ServicesDep) -> AdmissionController:
    if services.admission is None:
        raise ConfigError("this gateway has no admission control (create_app sets it)")
    return services.admission


Admission = Annotated[AdmissionController, Depends(get_admission)]


async def get_idempotency(services: ServicesDep) -> IdempotencyStore | None:
    """None on an app assembled without one (build_app always has one): keys are then not enforced."""
    return services.idempotency


Idempotency = Annotated[IdempotencyStore | None, Depends(get_idempotency)]


async def get_contexts(services: ServicesDep) -> ContextStore:
    """The registered HE contexts (build_app always has a store; an app assembled without one refuses)."""
    if services.contexts is None:
        raise StoreUnavailable("this gateway keeps no HE context store")
    return services.contexts


Contexts = Annotated[ContextStore, Depends(get_contexts)]
