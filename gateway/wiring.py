"""Connect the gateway core to the deployment's identity, policy and audit components."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request

from gateway.auth import Authenticator, add_user, presented_key_id
from gateway.config import GatewayConfig
from gateway.contexts import ContextStore
from gateway.idempotency import IdempotencyStore
from gateway.ratelimit import Limiter, RateLimiter, SharedRateLimiter
from gateway.state import shared_database
from policies.approvals import ApprovalRegistry, Approvers
from policies.budgets import CohortPrivacyBudget, ProbeBudget
from policies.consent import ConsentManagers, ConsentRegistry
from policies.decision import DEFAULT_POLICY_DIR, CheckAuthorizer
from policies.reload import PolicyReloader
from policies.requesters import Requesters
from policies.silver_claims import SilverClaims
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
    # the consent manager acting for data subjects; its signing key is in consent_managers.toml
    "consent_manager": ("cm-mydata", "mydata", "consent_manager", "bronze"),
    # the federation data office's approver (its key is in approvers.toml): registers approvals
    "approver": ("ap-wu", "data_office", "approver", "bronze"),
}


def write_dev_users(path: Path) -> dict[str, str]:
    """Register the development users; returns {label: api key} (shown once, kept by the caller)."""
    return {label: add_user(path, *spec) for label, spec in DEV_USERS.items()}


class RestAuthenticator:
    """API key -> Principal, then a per-user token bucket (rate limits apply after identity).

    The key is always checked first: a valid key is never refused because of anybody else's
    failures (behind an ingress every caller shares one address). Failed authentications are
    charged to two buckets, the caller's address and the presented key id (the public half of
    a well-formed key); once either is empty, further failures are answered 429 instead of 401.
    The secret half has 256 bits, so the limit is about cost and noise, not guessability, and
    a key's owner keeps working while someone hammers their key id or their ingress.
    """

    def __init__(
        self, authenticator: Authenticator, limiter: Limiter, failures: Limiter | None = None, *, offload: bool = False
    ) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.failures: Limiter = failures or RateLimiter(rate_per_s=1.0, burst=20)
        # Replicas look users and buckets up in PostgreSQL: that round trip must not stall the
        # event loop every other request (and every refusal) is waiting on.
        self.offload = offload

    def __call__(self, request: Request) -> Principal | Awaitable[Principal]:
        if self.offload:
            return asyncio.to_thread(self.authenticate, request)
        return self.authenticate(request)

    def authenticate(self, request: Request) -> Principal:
        try:
            principal = self.authenticator.authenticate(request.headers)
        except Unauthenticated:
            self._charge_failure(request)
            raise
        self.limiter.acquire(principal.user, tier=principal.tier)
        return principal

    def _charge_failure(self, request: Request) -> None:
        """Charge a failed authentication; raise 429 if the address or key id has none left."""
        buckets = {"address": f"address:{request.client.host if request.client else 'unknown'}"}
        key_id = presented_key_id(request.headers)
        if key_id is not None:
            buckets["key id"] = f"key:{key_id}"
        refused: BudgetExhausted | None = None
        which = ""
        for label, bucket in buckets.items():
            try:
                self.failures.acquire(bucket)
            except BudgetExhausted as exc:
                refused, which = refused or exc, which or label
        if refused is not None:
            raise BudgetExhausted(
                f"too many failed authentications for this {which}", retry_after_s=refused.details["retry_after_s"]
            ) from None


def policy_for(config: GatewayConfig) -> tuple[CheckAuthorizer, ConsentRegistry, Requesters]:
    """The gateway's policy decision point (hot-reloaded), probing and ε budgets, silver claims, consent
    and approval registries, and the requesters' signing keys (checked before the decision point)."""
    settings = config.gateway
    state = state_dir_of(config)
    state.mkdir(parents=True, exist_ok=True)
    policy_dir = settings.policy_dir or DEFAULT_POLICY_DIR
    # signed_policies: the start and every reload take only a CA-signed bundle, each reload a newer one
    signed_by = config.tls.ca if settings.signed_policies and config.tls else None
    reloader = PolicyReloader(policy_dir, ca_cert=signed_by).start()
    bundle = (lambda: reloader.bundle) if signed_by is not None else None
    shared = shared_database(config)
    # Reservations a check holds are leased for longer than this replica's checks may take: one
    # left behind by a gateway that died is given back once the lease runs out.
    lease_s = longest_check_s(config) + 60
    consents = ConsentRegistry(
        shared or state / "consents.sqlite",
        purposes=reloader.engine.purposes,
        managers=ConsentManagers(policy_dir, bundle),
        lease_s=lease_s,
    )
    budgets = ProbeBudget(shared or state / "budgets.sqlite", lease_s=lease_s)
    approvals = ApprovalRegistry(
        shared or state / "approvals.sqlite", approvers=Approvers(policy_dir, bundle), lease_s=lease_s
    )
    privacy = CohortPrivacyBudget(shared or state / "cohort_epsilon.sqlite", lease_s=lease_s)
    claims = SilverClaims(shared or state / "silver_claims.sqlite", lease_s=lease_s)
    authorizer = CheckAuthorizer(
        engine=reloader, budgets=budgets, consents=consents, approvals=approvals, privacy=privacy, claims=claims
    )
    return authorizer, consents, Requesters(policy_dir, bundle)


def idempotency_for(config: GatewayConfig) -> IdempotencyStore:
    """POST /v1/checks Idempotency-Key claims and answers: <state_dir>/idempotency.sqlite, or the
    replicas' shared database, where a claim made on one replica is seen by all.

    Each claim records when it may be taken over (`stale_at`, on the database's clock): the
    longest this replica's check may take (the request deadline, or the fan-out deadline if
    longer) plus a margin, so another replica with other settings or another clock honours it."""
    settings = config.gateway
    state = state_dir_of(config)
    state.mkdir(parents=True, exist_ok=True)
    return IdempotencyStore(
        shared_database(config) or state / "idempotency.sqlite",
        ttl_s=settings.idempotency_ttl_hours * 3600,
        stale_after_s=longest_check_s(config) + 30,
    )


def longest_check_s(config: GatewayConfig) -> float:
    """The longest a check may take on this replica: its request deadline, or the fan-out deadline if longer."""
    settings = config.gateway
    return max(settings.deadline_seconds, settings.admission.request_deadline_s)


def contexts_for(config: GatewayConfig) -> ContextStore:
    """Registered HE public contexts: <state_dir>/contexts.sqlite, or the replicas' shared database
    (a context registered through one replica is found by every other)."""
    settings = config.gateway
    state = state_dir_of(config)
    state.mkdir(parents=True, exist_ok=True)
    return ContextStore(
        shared_database(config) or state / "contexts.sqlite",
        ttl_s=settings.context_ttl_days * 86400,
        max_per_owner=settings.contexts_per_user,
    )


def state_dir_of(config: GatewayConfig) -> Path:
    settings = config.gateway
    return settings.state_dir or settings.mask_key_file.parent / "state"


def training_for(config: GatewayConfig, policy: CheckAuthorizer, audit_log: Any) -> TrainingService:
    """POST /v1/training/jobs: the gateway's `train` decision, its ε ledger and the job runner.

    Jobs run in <state_dir>/jobs and ε spends in <state_dir>/privacy.sqlite (replicas: the shared
    database): where the console's
    Training page reads them; each job's record (id, decision, summary) is also in the state store
    (gateway/training_jobs.py), shared by every replica in replicated mode. Without a [training]
    section the endpoint answers 503. With `superlink_port` set (remote mode) the gateway runs a
    long-lived SuperLink that the agencies' own SuperNodes dial (`xgate node supernode`); in local
    mode it runs a long-lived SuperLink and the configured nodes' SuperNodes itself.
    """
    from gateway.training_jobs import TrainingJobStore
    from gateway.training_remote import remote_training
    from gateway.training_service import TrainingNode, TrainingService
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
    local = None
    if nodes:  # local mode: one SuperLink and the nodes' SuperNodes for the gateway's lifetime
        from federated.local_link import LocalTraining

        assert training is not None
        local = LocalTraining(state_dir=state / "flower-local", nodes=[n.spec() for n in nodes], ca_dir=training.ca_dir)
    return TrainingService(
        policy=policy,
        # Replicas charge one ledger: a dataset's ε cap holds across them, not per replica.
        ledger=PrivacyLedger(shared_database(config) or state / "privacy.sqlite"),
        jobs_dir=(training.jobs_dir if training and training.jobs_dir else state / "jobs"),
        nodes=nodes,
        audit_log=audit_log,
        node_policy_dir=config.gateway.policy_dir,
        ca_dir=training.ca_dir if training else None,
        remote=remote,
        local=local,
        approvals=policy.approvals,
        jobs=TrainingJobStore(
            shared_database(config) or state / "training_jobs.sqlite", replica=config.gateway.replica or "gateway"
        ),
    )


def authenticator_for(config: GatewayConfig) -> RestAuthenticator:
    settings = config.gateway
    shared = shared_database(config)
    if settings.users_file is None and shared is None:
        raise ConfigError("gateway config names no users_file: every REST caller must authenticate")
    if shared is not None:  # replicas share users and every bucket: N gateways do not multiply anyone's allowance
        from gateway.auth import load_users
        from gateway.user_store import UserStore

        users = UserStore(shared)
        if settings.users_file is not None and settings.users_file.exists():
            users.import_records(load_users(settings.users_file))
        return RestAuthenticator(
            Authenticator(store=users),
            SharedRateLimiter(shared, rate_per_s=settings.rate_per_s, burst=settings.rate_burst, namespace="rest"),
            SharedRateLimiter(
                shared, rate_per_s=settings.failed_auth_per_s, burst=settings.failed_auth_burst, namespace="failed-auth"
            ),
            offload=True,
        )
    return RestAuthenticator(
        Authenticator(settings.users_file),
        RateLimiter(rate_per_s=settings.rate_per_s, burst=settings.rate_burst),
        RateLimiter(rate_per_s=settings.failed_auth_per_s, burst=settings.failed_auth_burst),
    )
