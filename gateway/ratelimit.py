"""Per-user token buckets for the REST API (thread-safe, memory-bounded).

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

from xgate.errors import BudgetExhausted, ConfigError, InvalidInput


@dataclass(frozen=True)
class Limit:
    rate_per_s: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ConfigError("rate limit needs rate_per_s > 0 and burst >= 1")


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
