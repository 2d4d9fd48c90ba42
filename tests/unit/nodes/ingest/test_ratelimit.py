"""Token buckets per tenant with an injected clock: burst, refill, reserve and bounds."""

from __future__ import annotations

import msgspec
import pytest

from vigil.nodes.ingest._ratelimit import Decision, RateLimitConfig, RateLimiter, TokenBucket

pytestmark = pytest.mark.verifies("SR-RL-001")

SECOND = 1_000_000_000
HIGH = 4
LOW = 0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        self.now_ns += ns


def _limiter(**config: float) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    settings: dict[str, float] = {"rate_per_s": 10.0, "burst": 8.0, "reserved_fraction": 0.25}
    settings.update(config)
    return RateLimiter(msgspec.convert(settings, RateLimitConfig), clock), clock


def _allowed(limiter: RateLimiter, tenant: str, priority: int, count: int) -> int:
    return sum(limiter.decide(tenant, priority).allowed for _ in range(count))


# -- TokenBucket --------------------------------------------------------------------------


def test_bucket_starts_full() -> None:
    """A new bucket holds its whole burst."""
    assert TokenBucket(1.0, 5.0, 0).tokens == 5.0


def test_bucket_take_respects_the_floor() -> None:
    """take() only succeeds while at least `floor` tokens stay behind."""
    bucket = TokenBucket(1.0, 3.0, 0)
    assert bucket.take(2.0)
    assert not bucket.take(2.0)
    assert bucket.take(0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.0)


def test_bucket_refills_at_its_rate() -> None:
    """Tokens come back at `rate` per second of clock time."""
    bucket = TokenBucket(4.0, 10.0, 0)
    bucket.tokens = 0.0
    bucket.refill(SECOND // 2)
    assert bucket.tokens == pytest.approx(2.0)


def test_bucket_never_exceeds_its_burst() -> None:
    """Refilling stops at the burst however long the pause."""
    bucket = TokenBucket(4.0, 10.0, 0)
    bucket.refill(3600 * SECOND)
    assert bucket.tokens == 10.0


def test_bucket_ignores_a_clock_going_back() -> None:
    """A clock reading earlier than the last refill adds no tokens."""
    bucket = TokenBucket(4.0, 10.0, SECOND)
    bucket.tokens = 1.0
    bucket.refill(0)
    assert bucket.tokens == 1.0


@pytest.mark.parametrize(
    ("tokens", "floor", "wait"), [(1.0, 0.0, 0), (0.0, 0.0, 250), (0.5, 0.0, 125), (1.0, 2.0, 500)]
)
def test_bucket_wait_ms(tokens: float, floor: float, wait: int) -> None:
    """wait_ms is the time until one token above the floor, rounded up to a millisecond."""
    bucket = TokenBucket(4.0, 10.0, 0)
    bucket.tokens = tokens
    assert bucket.wait_ms(floor) == wait


# -- RateLimiter --------------------------------------------------------------------------


def test_spending_goes_into_debt_that_refills_pay_back() -> None:
    """The refusal pace spends a token per refusal even with none left: the debt says how
    long reading waits (1000 a second: 3 owed and 1 to take is 4 ms)."""
    bucket = TokenBucket(rate_per_s=1000.0, burst=2.0, now_ns=0)
    for _ in range(5):
        bucket.spend()
    assert bucket.tokens == -3.0
    assert bucket.wait_ms(0.0) == 4
    bucket.refill(4_000_000)
    assert bucket.tokens == 1.0 and bucket.wait_ms(0.0) == 0


def test_zero_rate_turns_limiting_off() -> None:
    """With rate_per_s 0 every request is allowed and nothing is counted."""
    limiter, _ = _limiter(rate_per_s=0.0)
    assert not limiter.enabled
    assert _allowed(limiter, "t", LOW, 1000) == 1000
    assert (limiter.allowed, limiter.refused) == (0, 0)


def test_high_priority_may_use_the_whole_burst() -> None:
    """At one instant a high-priority tenant gets exactly `burst` requests."""
    limiter, _ = _limiter()
    assert _allowed(limiter, "t", HIGH, 20) == 8


def test_low_priority_stops_at_the_reserve() -> None:
    """Low-priority requests leave burst * reserved_fraction tokens for high priority."""
    limiter, _ = _limiter()
    assert _allowed(limiter, "t", LOW, 20) == 6
    assert _allowed(limiter, "t", HIGH, 20) == 2


def test_priority_threshold_is_inclusive() -> None:
    """`high_priority` itself counts as high priority; one below does not."""
    limiter, _ = _limiter(high_priority=5)
    assert _allowed(limiter, "a", 4, 20) == 6
    assert _allowed(limiter, "b", 5, 20) == 8


def test_refill_allows_more_after_time_passes() -> None:
    """After 0.3 s at 10/s, three more requests are allowed."""
    limiter, clock = _limiter()
    _allowed(limiter, "t", HIGH, 8)
    clock.advance(3 * SECOND // 10)
    assert _allowed(limiter, "t", HIGH, 10) == 3


def test_refused_request_says_when_to_retry() -> None:
    """A refusal carries the milliseconds until a token is available at its priority."""
    limiter, _ = _limiter()
    _allowed(limiter, "t", LOW, 6)
    assert limiter.decide("t", LOW) == Decision(False, 100)
    _allowed(limiter, "t", HIGH, 2)
    assert limiter.decide("t", HIGH) == Decision(False, 100)


def test_retry_after_is_honest() -> None:
    """Retrying after retry_after_ms succeeds; retrying 1 ms earlier does not."""
    limiter, clock = _limiter(rate_per_s=3.0)
    _allowed(limiter, "t", HIGH, 8)
    wait_ms = limiter.decide("t", HIGH).retry_after_ms
    assert wait_ms == 334
    clock.advance((wait_ms - 1) * 1_000_000)
    assert not limiter.decide("t", HIGH).allowed
    clock.advance(1_000_000)
    assert limiter.decide("t", HIGH).allowed


def test_tenants_have_separate_buckets() -> None:
    """One tenant using its burst does not limit another."""
    limiter, _ = _limiter()
    _allowed(limiter, "noisy", HIGH, 100)
    assert _allowed(limiter, "quiet", HIGH, 8) == 8


def test_counters_track_decisions() -> None:
    """allowed and refused count every decision."""
    limiter, _ = _limiter()
    _allowed(limiter, "t", HIGH, 10)
    assert (limiter.allowed, limiter.refused) == (8, 2)


def test_tenant_table_is_bounded() -> None:
    """Beyond max_tenants the earliest-created tenant's bucket is forgotten."""
    limiter, _ = _limiter(max_tenants=2)
    for tenant in ("a", "b", "c"):
        _allowed(limiter, tenant, HIGH, 8)
    assert list(limiter._buckets) == ["b", "c"]
    assert _allowed(limiter, "b", HIGH, 1) == 0


@pytest.mark.parametrize(
    "settings",
    [
        {"rate_per_s": -1.0},
        {"burst": 0.5},
        {"reserved_fraction": 1.0},
        {"high_priority": 8},
        {"max_tenants": 0},
        {"bucket": 1},
    ],
)
def test_config_refuses_bad_values(settings: dict[str, float]) -> None:
    """Negative rates, a burst under 1, a full reserve and unknown keys are refused."""
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(settings, RateLimitConfig)
