"""Connect the gateway core to the deployment's identity, policy and audit components."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from gateway.auth import Authenticator, add_user
from gateway.config import GatewayConfig
from gateway.consent_routes import build_consent_router
from gateway.ratelimit import RateLimiter
from policies.budgets import ProbeBudget
from policies.consent import ConsentRegistry
from policies.engine import DEFAULT_POLICY_DIR
from policies.pdp import CheckAuthorizer
from policies.reload import PolicyReloader
from policies.types import AccessRequest
from xgate.errors import BudgetExhausted, ConfigError, Unauthenticated
from xgate.principal import Principal

if TYPE_CHECKING:
    from gateway.training_service import TrainingService

# The development federation's people: one per role the demo and tests exercise.
DEV_USERS = {
    "caseworker": ("cw-zhang", "civil_affairs", "caseworker", "gold"),
    "caseworker_silver": ("cw-li", "civil_affairs", "caseworker", "silver"),
    "caseworker_bronze": ("cw-wang", "civil_affairs", "caseworker", "bronze"),
    "hrss_caseworker": ("cw-chen", "hrss", "caseworker", "gold"),
    "analyst": ("an-liu", "hrss", "analyst", "gold"),
    "officer": ("so-zhao", "civil_affairs", "security_officer", "gold"),
    "admin": ("ad-sun", "civil_affairs", "admin", "gold"),
}


def write_dev_users(path: Path) -> dict[str, str]:
    """Register the development users; returns {label: api key} (shown once, kept by the caller)."""
    return {label: add_user(path, *spec) for label, spec in DEV_USERS.items()}


class RestAuthenticator:
    """API key -> Principal, then a per-user token bucket (rate limits apply after identity).

    Failed authentications are charged to the caller's address in a second bucket: an address
    that keeps presenting bad keys is answered 429 before any key is checked (guessing keys at
    line rate is not possible), while other addresses and authenticated users are unaffected.
    """

    def __init__(self, authenticator: Authenticator, limiter: RateLimiter, failures: RateLimiter | None = None) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.failures = failures or RateLimiter(rate_per_s=1.0, burst=20)

    def __call__(self, request: Request) -> Principal:
        address = f"address:{request.client.host if request.client else 'unknown'}"
        try:
            self.failures.ensure_available(address)
        except BudgetExhausted as exc:
            raise BudgetExhausted(
                "too many failed authentications from this address", retry_after_s=exc.details["retry_after_s"]
            ) from None
        try:
            principal = self.authenticator.authenticate(request.headers)
        except Unauthenticated:
            with contextlib.suppress(BudgetExhausted):  # this attempt is refused with 401 either way
                self.failures.acquire(address)
            raise
        self.limiter.acquire(principal.user, tier=principal.tier)
        return principal


def policy_for(config: GatewayConfig, authenticate: RestAuthenticator) -> tuple[CheckAuthorizer, list[APIRouter]]:
    """The gateway's policy decision point (hot-reloaded), probing budgets and consent registry."""
    settings = config.gateway
    state = state_dir_of(config)
    state.mkdir(parents=True, exist_ok=True)
    reloader = PolicyReloader(settings.policy_dir or DEFAULT_POLICY_DIR).start()
    consents = ConsentRegistry(state / "consents.sqlite", purposes=reloader.engine.purposes)
    authorizer = CheckAuthorizer(engine=reloader, budgets=ProbeBudget(state / "budgets.sqlite"), consents=consents)
    return authorizer, [build_consent_router(consents, authenticate)]


def state_dir_of(config: GatewayConfig) -> Path:
    settings = config.gateway
    return settings.state_dir or settings.mask_key_file.parent / "state"


def training_for(
    config: GatewayConfig, authenticate: RestAuthenticator, policy: CheckAuthorizer, audit_log: Any
) -> tuple[TrainingService, APIRouter]:
    """POST /v1/training/jobs: the gateway's `train` decision, its ε ledger and the job runner.

    Jobs live in <state_dir>/jobs and ε spends in <state_dir>/privacy.sqlite: where the console's
    Training page reads them. Without a [training] section the endpoint answers 503. With
    `superlink_port` set (remote mode) the gateway runs a long-lived SuperLink that the agencies'
    own SuperNodes dial (`xgate node supernode`).
    """
    from gateway.training_remote import remote_training
    from gateway.training_routes import TrainingNode, TrainingService, build_training_router
    from policies.budgets import PrivacyLedger

    state = state_dir_of(config)
    training = config.training
    # Remote mode: the agencies run their own SuperNodes; the gateway holds only their public keys.
    remote = remote_training(training, config.gateway.catalogue, state)
    nodes = []
    if remote is None and training is not None:
        for n in training.nodes:
            assert n.store is not None and n.ledger is not None  # local nodes, checked by the config loader
            nodes.append(TrainingNode(n.agency, n.store, n.ledger, n.holdout, n.policy_dir))
    service = TrainingService(
        policy=policy,
        ledger=PrivacyLedger(state / "privacy.sqlite"),
        jobs_dir=(training.jobs_dir if training and training.jobs_dir else state / "jobs"),
        nodes=nodes,
        audit_log=audit_log,
        node_policy_dir=config.gateway.policy_dir,
        ca_dir=training.ca_dir if training else None,
        remote=remote,
    )
    return service, build_training_router(service, authenticate)


def officer_guard(authenticate: RestAuthenticator, policy: CheckAuthorizer) -> Callable[[Request], Principal]:
    """Only security officers read the audit log, and only if the policy set says so (read_audit)."""

    def require_officer(request: Request) -> Principal:
        principal = authenticate(request)
        request.state.principal = principal
        engine = policy.engine.engine if hasattr(policy.engine, "engine") else policy.engine
        engine.decide(
            AccessRequest(
                principal=principal.user,
                action="read_audit",
                resource="AuditLog::federation",
                purpose="security_audit",
                requesting_agency=principal.agency,
            )
        ).raise_if_denied()
        return principal

    return require_officer


def authenticator_for(config: GatewayConfig) -> RestAuthenticator:
    settings = config.gateway
    if settings.users_file is None:
        raise ConfigError("gateway config names no users_file: every REST caller must authenticate")
    return RestAuthenticator(
        Authenticator(settings.users_file),
        RateLimiter(rate_per_s=settings.rate_per_s, burst=settings.rate_burst),
        RateLimiter(rate_per_s=settings.failed_auth_per_s, burst=settings.failed_auth_burst),
    )
