"""When the demo source sends its next frame: at a fixed rate, or below what the pipeline sustains.

A fixed rate is a camera that ignores the machine it runs on; on a slow or busy machine its
frames queue until they miss their deadline. `Adaptive` measures instead: it first keeps a few
requests in flight (a closed loop, which can never overload anything) and times the answers,
then sends at a fraction of that rate. When the machine gets busier it backs off (requests
queue, answers come late, or the pipeline refuses work) and remembers where that happened, so
it comes back to just below it; only after a long quiet spell does it probe higher again. The
logic is pure: the node passes the clock in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from vigil.nodes.demo_source._contract import PacingConfig

__all__ = ["Adaptive", "Fixed", "Pace", "Phase"]

_S: Final = 1_000_000_000
_BACKOFF: Final = 0.7
"""On congestion the rate is multiplied by this..."""
_REMEMBER: Final = 0.9
"""...and the rate it then climbs back to is this share of the rate congestion came at."""
_CLIMB: Final = 0.05
"""Each quiet second the rate climbs by this share of the planned rate..."""
_PROBE_AFTER_NS: Final = 10 * _S
"""...and after this long quiet at its target, the target itself grows,"""
_PROBE: Final = 1.1
"""by this factor, never past the planned rate."""
_FLOOR: Final = 0.125
"""The rate never falls below this share of the planned rate."""
_WAITING: Final = 1
"""Requests that may wait beyond a full calibration window: more, and they queue."""
_LATE: Final = 3
"""An answer later than a deadline over this has come close to missing it."""
_TICK_NS: Final = 100_000_000
"""How often a calibrating source looks at its window without a reply."""


class Pace(Protocol):
    """The schedule of a source: how many frames are due, and what it learns from replies."""

    in_flight_limit: int
    """A frame due while this many requests are in flight is skipped, as a camera would."""

    def due(self, now_ns: int, in_flight: int) -> int:
        """How many frames to send now; the schedule counts them as sent."""

    def wait_ns(self, now_ns: int) -> int:
        """How long the source may sleep before `due` can change without a reply."""

    def answered(self, now_ns: int, latency_ns: int) -> None:
        """A valid frame came back with a result after `latency_ns`."""

    def overloaded(self, now_ns: int) -> None:
        """A request was refused or timed out for load (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED)."""

    def report(self) -> dict[str, Any]:
        """What the schedule did, for the source's report."""


class Fixed:
    """One frame every `1/rate_hz` seconds, whatever happens to them."""

    def __init__(self, rate_hz: float, now_ns: int, in_flight_limit: int) -> None:
        self.period_ns = int(_S / rate_hz)
        self.next_ns = now_ns
        self.in_flight_limit = in_flight_limit

    def due(self, now_ns: int, in_flight: int) -> int:
        if now_ns < self.next_ns:
            return 0
        count = (now_ns - self.next_ns) // self.period_ns + 1
        self.next_ns += count * self.period_ns
        return count

    def wait_ns(self, now_ns: int) -> int:
        return max(0, self.next_ns - now_ns)

    def answered(self, now_ns: int, latency_ns: int) -> None:
        pass

    def overloaded(self, now_ns: int) -> None:
        pass

    def report(self) -> dict[str, Any]:
        return {"mode": "fixed", "rate_hz": round(_S / self.period_ns, 3)}


class Phase(enum.Enum):
    """Where an adaptive schedule is."""

    CALIBRATING = "calibrating"
    DRIVING = "driving"


@dataclass
class _Calibration:
    """Answers timed in the closed loop; the first window of them only fills the pipeline."""

    answers: int = 0
    started_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)


class Adaptive:
    """Calibrate in a closed loop, then drive at `load` times the measured rate (at most
    `ceiling_hz`): the planned rate. Back off on congestion, climb back to just below where
    it came, and probe higher after a quiet spell, never past the planned rate.

    Congestion is any of: a frame due while the calibration window is full and one more
    request waits (or as many as the measured rate serves in half a deadline, if fewer), in
    which case the frame is skipped; an answer later than a third of its deadline; a request
    refused or timed out for load. So no request waits behind more than a window's worth of
    work, and one that meets a machine suddenly slower still has time to be served.
    """

    def __init__(
        self, config: PacingConfig, ceiling_hz: float, deadline_ns: int, now_ns: int
    ) -> None:
        self.config = config
        self.ceiling_hz = ceiling_hz
        self.deadline_ns = deadline_ns
        self.phase = Phase.CALIBRATING
        self.calibration = _Calibration()
        self.sustained_hz = 0.0
        """The answer rate measured in the closed loop."""
        self.planned_hz = 0.0
        """load x sustained, at most the ceiling: the most the source drives at."""
        self.target_hz = 0.0
        """What the rate climbs back to after a back-off."""
        self.rate_hz = 0.0
        self.backoffs = 0
        self.in_flight_limit = config.calibration_window + _WAITING
        self.next_ns = now_ns
        self._hold_until_ns = now_ns
        self._next_climb_ns = now_ns
        self._quiet_since_ns = now_ns
        self._window_latency_ns = 0

    # -- the schedule ---------------------------------------------------------------------

    def due(self, now_ns: int, in_flight: int) -> int:
        if self.phase is Phase.CALIBRATING:
            if now_ns < self._hold_until_ns:
                return 0
            return max(0, self.config.calibration_window - in_flight)
        if in_flight >= self.in_flight_limit:
            self._back_off(now_ns)
        elif now_ns >= self._next_climb_ns:
            self._climb(now_ns)
        if now_ns < self.next_ns:
            return 0
        period = int(_S / self.rate_hz)
        self.next_ns += period
        if self.next_ns <= now_ns:
            self.next_ns = now_ns + period  # woken late: the frames missed meanwhile are dropped
        return 1

    def wait_ns(self, now_ns: int) -> int:
        if self.phase is Phase.CALIBRATING:
            return _TICK_NS
        return max(0, self.next_ns - now_ns)

    # -- what the replies say ---------------------------------------------------------------

    def answered(self, now_ns: int, latency_ns: int) -> None:
        if self.phase is Phase.DRIVING:
            if latency_ns * _LATE > self.deadline_ns:
                self._back_off(now_ns)
            return
        cal = self.calibration
        cal.answers += 1
        warmup = self.config.calibration_window
        if cal.answers == warmup:
            cal.started_ns = now_ns
        elif cal.answers > warmup:
            cal.latencies_ns.append(latency_ns)
            if cal.answers - warmup >= self.config.calibration_answers:
                self._calibrated(now_ns)

    def overloaded(self, now_ns: int) -> None:
        if self.phase is Phase.DRIVING:
            self._back_off(now_ns)
        else:
            # A refusal comes back at once; refilling the window at once would make the closed
            # loop a flood of requests to a pipeline that is refusing them.
            self._hold_until_ns = now_ns + _S

    def _calibrated(self, now_ns: int) -> None:
        cal = self.calibration
        measured = cal.answers - self.config.calibration_window
        elapsed_ns = max(1, now_ns - cal.started_ns)
        self.sustained_hz = measured * _S / elapsed_ns
        self.planned_hz = min(self.ceiling_hz, self.config.load * self.sustained_hz)
        self.target_hz = self.rate_hz = self.planned_hz
        served_in_half_a_deadline = int(self.sustained_hz * self.deadline_ns / (2 * _S))
        self.in_flight_limit = max(1, min(self.in_flight_limit, served_in_half_a_deadline))
        latencies = sorted(cal.latencies_ns)
        self._window_latency_ns = latencies[len(latencies) // 2]
        self.phase = Phase.DRIVING
        self.next_ns = now_ns
        self._next_climb_ns = self._quiet_since_ns = now_ns + _S

    def _back_off(self, now_ns: int) -> None:
        # Once per hold: what is in flight was sent at the old rate and says nothing new.
        if now_ns < self._hold_until_ns:
            return
        self.backoffs += 1
        floor = _FLOOR * self.planned_hz
        self.target_hz = max(floor, _REMEMBER * self.rate_hz)
        self.rate_hz = max(floor, _BACKOFF * self.rate_hz)
        self._hold_until_ns = now_ns + max(2 * self._window_latency_ns, _S)
        self._next_climb_ns = self._quiet_since_ns = self._hold_until_ns

    def _climb(self, now_ns: int) -> None:
        if self.rate_hz >= self.target_hz and now_ns - self._quiet_since_ns >= _PROBE_AFTER_NS:
            self.target_hz = min(self.planned_hz, _PROBE * self.target_hz)
            self._quiet_since_ns = now_ns
        self.rate_hz = min(self.target_hz, self.rate_hz + _CLIMB * self.planned_hz)
        self._next_climb_ns = now_ns + _S

    def report(self) -> dict[str, Any]:
        return {
            "mode": "adaptive",
            "phase": self.phase.value,
            "sustained_hz": round(self.sustained_hz, 3),
            "planned_hz": round(self.planned_hz, 3),
            "target_hz": round(self.target_hz, 3),
            "rate_hz": round(self.rate_hz, 3),
            "in_flight_limit": self.in_flight_limit,
            "backoffs": self.backoffs,
        }
