"""Per-user token buckets for the REST API: in memory (one gateway) or shared (replicas).

Each user has a bucket of `burst` tokens refilled at `rate_per_s`; a request costs one token
(or more, e.g. per subject). An empty bucket raises BudgetExhausted with `retry_after_s`, which
the REST edge turns into HTTP 429 + Retry-After. Tier-specific limits may override the default.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from xgate.db import Database, Migration, require_current
from xgate.errors import BudgetExhausted, ConfigError, InvalidInput


@dataclass(frozen=True)
class Limit:
    rate_per_s: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ConfigError("rate limit needs rate_per_s > 0 and burst >= 1")


class Limiter(Protocol):
    """What the REST edge needs of a rate limiter (in-memory or shared)."""

    def ensure_available(self, user: str, tier: str | None = None) -> None: ...

    def acquire(self, user: str, cost: float = 1.0, tier: str | None = None) -> None: ...


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        per_tier: Mapping[str, Limit] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = 100_000,
    ) -> None:
        self.default = Limit(rate_per_s, burst)
        self.per_tier = dict(per_tier or {})
        self.clock = clock
        self.max_users = max_users
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float, Limit]] = {}  # user -> (tokens, last refill, limit)

    def _limit(self, tier: str | None) -> Limit:
        return self.per_tier.get(tier, self.default) if tier is not None else self.default

    def _evict_full(self, now: float) -> None:
        """Drop buckets that have refilled completely: they carry no state worth keeping."""
        for user, (tokens, last, lim) in list(self._buckets.items()):
            if tokens + (now - last) * lim.rate_per_s >= lim.burst:
                del self._buckets[user]

    def ensure_available(self, user: str, tier: str | None = None) -> None:
        """Raise BudgetExhausted if ``user`` has less than one token left; consumes nothing."""
        lim = self._limit(tier)
        now = self.clock()
        with self._lock:
            tokens, last, _ = self._buckets.get(user, (lim.burst, now, lim))
        tokens = min(lim.burst, tokens + (now - last) * lim.rate_per_s)
        if tokens < 1:
            retry = (1 - tokens) / lim.rate_per_s
            raise BudgetExhausted("rate limit exceeded", retry_after_s=math.ceil(retry * 1000) / 1000)

    def acquire(self, user: str, cost: float = 1.0, tier: str | None = None) -> None:
        """Take `cost` tokens from the user's bucket or raise BudgetExhausted(retry_after_s=...)."""
        lim = self._limit(tier)
        if cost <= 0:
            raise InvalidInput("rate-limit cost must be positive")
        if cost > lim.burst:
            raise InvalidInput("request is larger than the rate limit allows at once", burst=lim.burst)
        now = self.clock()
        with self._lock:
            tokens, last, _ = self._buckets.get(user, (lim.burst, now, lim))
            tokens = min(lim.burst, tokens + (now - last) * lim.rate_per_s)
            if tokens < cost:
                retry = (cost - tokens) / lim.rate_per_s
                self._buckets[user] = (tokens, now, lim)
                raise BudgetExhausted("rate limit exceeded", retry_after_s=math.ceil(retry * 1000) / 1000)
            if user not in self._buckets and len(self._buckets) >= self.max_users:
                self._evict_full(now)
                if len(self._buckets) >= self.max_users:
                    raise BudgetExhausted("too many active callers", retry_after_s=1.0)
            self._buckets[user] = (tokens - cost, now, lim)


RATE_LIMIT_MIGRATIONS = (
    Migration(
        "rate_limits",
        1,
        sqlite="""CREATE TABLE IF NOT EXISTS rate_buckets (
            bucket TEXT PRIMARY KEY, tokens REAL NOT NULL, last REAL NOT NULL, full_at REAL NOT NULL)""",
        postgresql="""CREATE TABLE IF NOT EXISTS rate_buckets (
            bucket TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, last DOUBLE PRECISION NOT NULL,
            full_at DOUBLE PRECISION NOT NULL)""",
    ),
)


def take(tokens: float, last: float, now: float, lim: Limit, cost: float) -> tuple[float, float | None]:
    """Pure token-bucket step: (tokens left after refill and, if granted, the charge; retry-after or None)."""
    available = min(lim.burst, tokens + max(0.0, now - last) * lim.rate_per_s)
    if available < cost:
        return available, math.ceil((cost - available) / lim.rate_per_s * 1000) / 1000
    return available - cost, None


class SharedRateLimiter:
    """The same buckets as `RateLimiter`, kept in the gateways' shared database (replicated mode).

    Every replica charges the one bucket per user (and per failed-auth address or key id), so N
    replicas do not multiply anyone's allowance by N. One short transaction per request, locked
    on the bucket; wall-clock time, since replicas share no monotonic clock. Buckets that have
    refilled completely carry no state and are pruned.
    """

    PRUNE_EVERY_S = 60.0

    def __init__(
        self,
        db: Database,
        rate_per_s: float,
        burst: float,
        *,
        per_tier: Mapping[str, Limit] | None = None,
        clock: Callable[[], float] = time.time,
        namespace: str = "rest",
    ) -> None:
        require_current(db, RATE_LIMIT_MIGRATIONS)
        self.db = db
        self.default = Limit(rate_per_s, burst)
        self.per_tier = dict(per_tier or {})
        self.clock = clock
        self.namespace = namespace
        self._pruned_at = -math.inf

    def _limit(self, tier: str | None) -> Limit:
        return self.per_tier.get(tier, self.default) if tier is not None else self.default

    def ensure_available(self, user: str, tier: str | None = None) -> None:
        lim, now, bucket = self._limit(tier), self.clock(), f"{self.namespace}/{user}"
        with self.db.read() as tx:
            row = tx.execute("SELECT tokens, last FROM rate_buckets WHERE bucket = ?", (bucket,)).fetchone()
        _, retry = take(float(row[0]), float(row[1]), now, lim, 1.0) if row else (lim.burst, None)
        if retry is not None:
            raise BudgetExhausted("rate limit exceeded", retry_after_s=retry)

    def acquire(self, user: str, cost: float = 1.0, tier: str | None = None) -> None:
        lim = self._limit(tier)
        if cost <= 0:
            raise InvalidInput("rate-limit cost must be positive")
        if cost > lim.burst:
            raise InvalidInput("request is larger than the rate limit allows at once", burst=lim.burst)
        now, bucket = self.clock(), f"{self.namespace}/{user}"
        with self.db.transaction(lock=[f"rate/{bucket}"]) as tx:
            row = tx.execute("SELECT tokens, last FROM rate_buckets WHERE bucket = ?", (bucket,)).fetchone()
            left, retry = (
                take(float(row[0]), float(row[1]), now, lim, cost) if row else take(lim.burst, now, now, lim, cost)
            )
            full_at = now + (lim.burst - left) / lim.rate_per_s
            tx.execute(
                "INSERT INTO rate_buckets (bucket, tokens, last, full_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (bucket) DO UPDATE SET tokens = excluded.tokens, last = excluded.last, "
                "full_at = excluded.full_at",
                (bucket, left, now, full_at),
            )
            if now - self._pruned_at >= self.PRUNE_EVERY_S:
                self._pruned_at = now
                tx.execute("DELETE FROM rate_buckets WHERE full_at <= ?", (now,))
        if retry is not None:
            raise BudgetExhausted("rate limit exceeded", retry_after_s=retry)
