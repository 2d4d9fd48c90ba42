"""Token-bucket rate limits per tenant, with capacity reserved for high-priority traffic."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import msgspec

from vigil.schemas._base import Config as NodeConfig

__all__ = ["Decision", "RateLimitConfig", "RateLimiter", "TokenBucket"]


class RateLimitConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-tenant request rate; `rate_per_s` 0 turns limiting off."""

    rate_per_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    burst: Annotated[float, msgspec.Meta(ge=1)] = 32.0
    # Low-priority requests may not take the bucket below this fraction of its burst, so
    # high-priority traffic always finds tokens left.
    reserved_fraction: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.25
    high_priority: Annotated[int, msgspec.Meta(ge=0, le=7)] = 4
    max_tenants: Annotated[int, msgspec.Meta(ge=1)] = 1024


class TokenBucket:
    """A token bucket refilled continuously from an injectable monotonic clock."""

    def __init__(self, rate_per_s: float, burst: float, now_ns: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.tokens = burst
        self._stamp = now_ns

    def refill(self, now_ns: int) -> None:
        """Add the tokens earned since the last refill, up to the burst."""
        elapsed = max(0, now_ns - self._stamp) / 1e9
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self._stamp = now_ns

    def take(self, floor: float) -> bool:
        """Take one token if at least `floor` stay behind."""
        if self.tokens - 1.0 >= floor:
            self.tokens -= 1.0
            return True
        return False

    def spend(self) -> None:
        """Take one token, into debt if none is left (paid back by refills)."""
        self.tokens -= 1.0

    def wait_ms(self, floor: float) -> int:
        """How long until a token above `floor` is available."""
        missing = floor + 1.0 - self.tokens
        return 0 if missing <= 0 else math.ceil(missing / self.rate * 1000)


@dataclass(frozen=True, slots=True)
class Decision:
    """The limiter's verdict on one request."""

    allowed: bool
    retry_after_ms: int = 0


# implements: SR-RL-001
class RateLimiter:
    """One bucket per tenant; priority decides how deep into the bucket a request may dig."""

    def __init__(self, config: RateLimitConfig, clock: Callable[[], int]) -> None:
        self.config = config
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._reserve = config.burst * config.reserved_fraction
        self.allowed = 0
        self.refused = 0

    @property
    def enabled(self) -> bool:
        """Whether any limit applies."""
        return self.config.rate_per_s > 0

    def decide(self, tenant: str, priority: int) -> Decision:
        """Allow or refuse one request of `tenant` at `priority`."""
        if not self.enabled:
            return Decision(True)
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            if len(self._buckets) >= self.config.max_tenants:
                # Forget the least recently created tenant: memory stays bounded.
                self._buckets.pop(next(iter(self._buckets)))
            bucket = self._buckets[tenant] = TokenBucket(
                self.config.rate_per_s, self.config.burst, now
            )
        bucket.refill(now)
        floor = 0.0 if priority >= self.config.high_priority else self._reserve
        if bucket.take(floor):
            self.allowed += 1
            return Decision(True)
        self.refused += 1
        return Decision(False, bucket.wait_ms(floor))
