"""The safety state machine: NORMAL, DEGRADED, RECOVERING and SAFE_STOP, driven by events."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from vigil.schemas import SafetyState

__all__ = ["MachineConfig", "SafetyMachine", "Transition"]


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """Thresholds of the state machine (from the watchdog's configuration)."""

    timeout_limit: int = 3
    recovery_delay_ns: int = 1_000_000_000
    max_recoveries: int = 3
    # Hysteresis: DEGRADED is held at least this long (however short the recovery delay);
    # a fault still degrades at once: detection is never delayed.
    min_dwell_ns: int = 500_000_000
    # Flapping: more than `flap_limit` degradations within a minute double the recovery
    # delay for each one more, up to `max_recovery_delay_ns`.
    flap_limit: int = 3
    max_recovery_delay_ns: int = 30_000_000_000


_MINUTE_NS = 60_000_000_000


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change and its cause."""

    previous: SafetyState
    state: SafetyState
    cause: str
    at_ns: int


# implements: SR-WDG-001, SR-WDG-002
class SafetyMachine:
    """Pure transition logic; the watchdog node feeds it events and the clock.

    NORMAL -> DEGRADED on `timeout_limit` consecutive inference timeouts or any fault
    (missing heartbeat, stale topic). DEGRADED -> RECOVERING when the watchdog timer
    (`recovery_delay_ns` without a new fault) expires. RECOVERING -> NORMAL when the
    known-answer probe passes, else back to DEGRADED. After `max_recoveries` failed
    recoveries in a row the machine goes to SAFE_STOP and stays there.

    Hysteresis keeps a fault that comes and goes from making the state flap: DEGRADED is held
    at least `min_dwell_ns`, and every degradation past `flap_limit` in a minute doubles the
    recovery delay. The rate of transitions is kept and reported with every state.
    """

    def __init__(
        self,
        config: MachineConfig,
        now_ns: int,
        state: SafetyState = SafetyState.NORMAL,
    ) -> None:
        self.config = config
        self.state = state
        self.since_ns = now_ns
        self.consecutive_timeouts = 0
        self.failed_recoveries = 0
        self.transitions = 0
        self._last_fault_ns = now_ns if state is not SafetyState.NORMAL else 0
        self._recent: deque[int] = deque()  # when each transition of the last minute happened
        self._degraded: deque[int] = deque()  # when each degradation of the last minute happened

    def _go(self, state: SafetyState, cause: str, now_ns: int) -> Transition:
        transition = Transition(self.state, state, cause, now_ns)
        if state is SafetyState.DEGRADED and self.state is SafetyState.NORMAL:
            self._degraded.append(now_ns)
        self.state = state
        self.since_ns = now_ns
        self.transitions += 1
        self._recent.append(now_ns)
        return transition

    def transitions_per_min(self, now_ns: int) -> int:
        """How many transitions happened in the last minute."""
        _forget(self._recent, now_ns)
        return len(self._recent)

    def flapping(self, now_ns: int) -> bool:
        """Whether more than `flap_limit` degradations happened in the last minute."""
        _forget(self._degraded, now_ns)
        return len(self._degraded) > self.config.flap_limit

    # implements: SR-WDG-004
    def recovery_delay_ns(self, now_ns: int) -> int:
        """The watchdog timer now: the configured delay, doubled per degradation past the
        flap limit in the last minute."""
        _forget(self._degraded, now_ns)
        extra = max(0, len(self._degraded) - self.config.flap_limit)
        delay = self.config.recovery_delay_ns << min(extra, 16)
        return max(self.config.min_dwell_ns, min(delay, self.config.max_recovery_delay_ns))

    def fault(self, cause: str, now_ns: int) -> Transition | None:
        """A detected fault: degrade (or, while recovering, fail the recovery)."""
        self._last_fault_ns = now_ns
        if self.state is SafetyState.NORMAL:
            return self._go(SafetyState.DEGRADED, cause, now_ns)
        if self.state is SafetyState.RECOVERING:
            return self._failed_recovery(cause, now_ns)
        return None

    def inference_timeout(self, now_ns: int) -> Transition | None:
        """One request ended in DEADLINE_EXCEEDED."""
        self.consecutive_timeouts += 1
        if self.consecutive_timeouts >= self.config.timeout_limit:
            self.consecutive_timeouts = 0
            return self.fault(f"{self.config.timeout_limit} consecutive inference timeouts", now_ns)
        return None

    def inference_ok(self) -> None:
        """One request ended with a result: the timeout run is broken."""
        self.consecutive_timeouts = 0

    def tick(self, now_ns: int, *, faults_active: bool) -> Transition | None:
        """Let time pass: the watchdog timer moves DEGRADED to RECOVERING once no fault is
        active and none was seen for the recovery delay."""
        if self.state is not SafetyState.DEGRADED or faults_active:
            return None
        delay = self.recovery_delay_ns(now_ns)
        if now_ns - max(self.since_ns, self._last_fault_ns) >= delay:
            return self._go(SafetyState.RECOVERING, "watchdog timer expired", now_ns)
        return None

    def recovery_due_ns(self, now_ns: int) -> int | None:
        """When the watchdog timer would expire (if no fault comes), or None."""
        if self.state is not SafetyState.DEGRADED:
            return None
        return max(self.since_ns, self._last_fault_ns) + self.recovery_delay_ns(now_ns)

    def probe_result(self, passed: bool, detail: str, now_ns: int) -> Transition | None:
        """The known-answer probe came back (only meaningful while RECOVERING)."""
        if self.state is not SafetyState.RECOVERING:
            return None
        if passed:
            self.failed_recoveries = 0
            return self._go(SafetyState.NORMAL, f"health probe passed: {detail}", now_ns)
        return self._failed_recovery(f"health probe failed: {detail}", now_ns)

    def _failed_recovery(self, cause: str, now_ns: int) -> Transition:
        self.failed_recoveries += 1
        self._last_fault_ns = now_ns
        if self.failed_recoveries >= self.config.max_recoveries:
            return self._go(
                SafetyState.SAFE_STOP, f"{cause}; recovery failed {self.failed_recoveries}x", now_ns
            )
        return self._go(SafetyState.DEGRADED, cause, now_ns)


def _forget(times: deque[int], now_ns: int) -> None:
    """Drop the times older than a minute."""
    while times and now_ns - times[0] >= _MINUTE_NS:
        times.popleft()
