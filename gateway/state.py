"""Where the gateway's shared state lives: SQLite files (embedded default) or one PostgreSQL database.

With `[gateway] database = "postgresql://…"` every replica opens the same database: probing
budgets, the cohort view's ε budgets, consents, rate limits, failed-authentication counters and
registered HE contexts are then exact across any number of gateway processes on any hosts, and REST users
(gateway/user_store.py), training jobs (gateway/training_jobs.py) and the audit logs' federation
manifest (gateway/audit_registry.py) are the same for all of them. The schema is applied by
`xgate gateway migrate`, never implicitly: a replica started on a schema behind its code refuses
to start and says so. Without `database`, each store is a SQLite file under `state_dir`, created
at start, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from gateway.audit_registry import AUDIT_REGISTRY_MIGRATIONS
from gateway.config import GatewayConfig
from gateway.contexts import CONTEXT_MIGRATIONS
from gateway.idempotency import IDEMPOTENCY_MIGRATIONS
from gateway.ratelimit import RATE_LIMIT_MIGRATIONS
from gateway.training_jobs import TRAINING_JOB_MIGRATIONS
from gateway.user_store import USER_MIGRATIONS
from policies.approvals import APPROVAL_MIGRATIONS
from policies.budgets import BUDGET_MIGRATIONS, COHORT_PRIVACY_MIGRATIONS, PRIVACY_LEDGER_MIGRATIONS
from policies.consent import CONSENT_MIGRATIONS
from policies.silver_claims import SILVER_CLAIM_MIGRATIONS
from xgate.db import Migration, PostgresDatabase, migrate

GATEWAY_MIGRATIONS: tuple[Migration, ...] = (
    *BUDGET_MIGRATIONS,
    *COHORT_PRIVACY_MIGRATIONS,
    *PRIVACY_LEDGER_MIGRATIONS,
    *SILVER_CLAIM_MIGRATIONS,
    *CONSENT_MIGRATIONS,
    *APPROVAL_MIGRATIONS,
    *RATE_LIMIT_MIGRATIONS,
    *IDEMPOTENCY_MIGRATIONS,
    *AUDIT_REGISTRY_MIGRATIONS,
    *USER_MIGRATIONS,
    *TRAINING_JOB_MIGRATIONS,
    *CONTEXT_MIGRATIONS,
)


def shared_database(config: GatewayConfig) -> PostgresDatabase | None:
    """The replicas' database (one pool per process, whoever asks), or None in the embedded mode."""
    url = config.gateway.database
    return _pool(url, config.gateway.database_pool_size) if url else None


@functools.cache
def _pool(url: str, size: int) -> PostgresDatabase:
    return PostgresDatabase(url, max_size=size)


def apply_migrations(db: PostgresDatabase, migrations: Sequence[Migration] = GATEWAY_MIGRATIONS) -> list[Migration]:
    return migrate(db, migrations)
