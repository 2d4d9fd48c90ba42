"""The demo source's schedules: a fixed rate, and a rate measured in a closed loop and kept
below what the pipeline sustains, driven by an injected clock."""

from __future__ import annotations

from vigil.nodes.demo_source import PacingConfig
from vigil.nodes.demo_source._pacing import Adaptive, Fixed, Phase

S = 1_000_000_000
MS = 1_000_000
CONFIG = PacingConfig(calibration_window=4, calibration_answers=10, load=0.5)
DEADLINE = 10 * S


def _calibrated(
    sustained_hz: float, ceiling_hz: float = 100.0, deadline_ns: int = DEADLINE
) -> tuple[Adaptive, int]:
    """An adaptive schedule fed answers at `sustained_hz` until calibrated; (it, the time)."""
    pace = Adaptive(CONFIG, ceiling_hz, deadline_ns, 0)
    now = 0
    step = int(S / sustained_hz)
    while pace.phase is Phase.CALIBRATING:
        now += step
        pace.answered(now, 4 * step)
    return pace, now


def test_fixed_rate_sends_one_frame_per_period() -> None:
    """A fixed schedule is due once per period, and catches up on periods it slept through."""
    pace = Fixed(10.0, 0, in_flight_limit=32)
    assert pace.due(0, 0) == 1
    assert pace.due(50 * MS, 0) == 0
    assert pace.wait_ns(50 * MS) == 50 * MS
    assert pace.due(100 * MS, 0) == 1
    assert pace.due(350 * MS, 99) == 2  # the frames due at 200 and 300 ms


def test_calibration_keeps_the_window_full_and_no_more() -> None:
    """While calibrating, frames are due only to refill the closed-loop window."""
    pace = Adaptive(CONFIG, 100.0, DEADLINE, 0)
    assert pace.due(0, 0) == 4
    assert pace.due(1, 4) == 0
    assert pace.due(2, 1) == 3


def test_a_refusal_while_calibrating_pauses_the_closed_loop() -> None:
    """A request refused while calibrating is not replaced for a second: refusals come back
    at once, and refilling at once would flood a pipeline that is refusing work."""
    pace = Adaptive(CONFIG, 100.0, DEADLINE, 0)
    assert pace.due(0, 0) == 4
    pace.overloaded(10 * MS)
    assert pace.due(20 * MS, 3) == 0
    assert pace.due(1010 * MS, 3) == 1
    assert pace.phase is Phase.CALIBRATING


def test_calibration_measures_the_answer_rate_after_the_first_window() -> None:
    """The sustained rate is what the answers after the first window arrive at; the source
    then drives at `load` of it."""
    pace = Adaptive(CONFIG, 100.0, DEADLINE, 0)
    now = 0
    for _ in range(4):  # the first window, slow: the pipeline fills and warms up
        now += 2 * S
        pace.answered(now, 2 * S)
    for _ in range(10):
        now += 100 * MS
        pace.answered(now, 400 * MS)
    assert pace.phase is Phase.DRIVING
    assert round(pace.sustained_hz, 6) == 10.0
    assert round(pace.rate_hz, 6) == 5.0


def test_rate_never_exceeds_the_ceiling() -> None:
    """On a fast machine the source still sends no faster than its camera's rate."""
    pace, _ = _calibrated(sustained_hz=200.0, ceiling_hz=8.0)
    assert pace.planned_hz == 8.0


def test_driving_sends_at_the_target_rate() -> None:
    """Once calibrated, one frame is due every 1/rate seconds."""
    pace, now = _calibrated(sustained_hz=20.0)
    sent = sum(pace.due(now + t * MS, 1) for t in range(0, 2000, 10))
    assert sent == 20  # 10 Hz for two seconds


def test_a_full_window_and_one_waiting_backs_off_once_per_hold() -> None:
    """A frame due while the calibration window is full and one more request waits lowers
    the rate, and the rate it climbs back to, once until the requests sent at the old rate
    have had time to return; the source skips that frame."""
    pace, now = _calibrated(sustained_hz=20.0)
    assert pace.in_flight_limit == 5
    pace.due(now, 4)
    assert pace.backoffs == 0
    pace.due(now, 5)
    assert pace.backoffs == 1
    assert round(pace.rate_hz, 6) == 7.0 and round(pace.target_hz, 6) == 9.0
    pace.due(now + 100 * MS, 8)
    assert pace.backoffs == 1
    pace.due(now + 1100 * MS, 8)
    assert pace.backoffs == 2
    assert round(pace.rate_hz, 6) == 4.9 and round(pace.target_hz, 6) == 6.3


def test_in_flight_limit_keeps_what_waits_within_half_a_deadline() -> None:
    """On a slow machine fewer requests may be in flight: at 4 answers/s and a 1 s deadline,
    two are as many as half a deadline serves."""
    pace, now = _calibrated(sustained_hz=4.0, deadline_ns=S)
    assert pace.in_flight_limit == 2
    pace.due(now, 1)
    assert pace.backoffs == 0
    pace.due(now, 2)
    assert pace.backoffs == 1


def test_refusals_for_load_back_off() -> None:
    """RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED or UNAVAILABLE replies lower the rate like
    queueing does."""
    pace, now = _calibrated(sustained_hz=20.0)
    pace.overloaded(now)
    assert pace.backoffs == 1 and pace.rate_hz < pace.planned_hz


def test_a_late_answer_backs_off() -> None:
    """An answer that took more than a third of its deadline lowers the rate; one in time
    does not."""
    pace, now = _calibrated(sustained_hz=20.0, deadline_ns=3 * S)
    pace.answered(now, 900 * MS)
    assert pace.backoffs == 0
    pace.answered(now, 1100 * MS)
    assert pace.backoffs == 1


def test_rate_climbs_back_below_where_congestion_came() -> None:
    """After a back-off the rate climbs by a twentieth of the planned rate each quiet second,
    up to nine tenths of the rate congestion came at."""
    pace, now = _calibrated(sustained_hz=20.0)
    pace.overloaded(now)
    rates = []
    for second in range(1, 8):
        pace.due(now + second * S, 1)
        rates.append(round(pace.rate_hz, 6))
    assert rates == [7.5, 8.0, 8.5, 9.0, 9.0, 9.0, 9.0]


def test_a_long_quiet_spell_probes_higher_but_never_past_the_plan() -> None:
    """Ten quiet seconds at its target raise the target by a tenth, up to the planned rate."""
    pace, now = _calibrated(sustained_hz=20.0)
    pace.overloaded(now)
    for second in range(1, 40):
        pace.due(now + second * S, 1)
    assert pace.target_hz == pace.planned_hz == pace.rate_hz == 10.0


def test_rate_has_a_floor() -> None:
    """However long requests queue, the source keeps sending at an eighth of its target."""
    pace, now = _calibrated(sustained_hz=16.0)
    for second in range(30):
        pace.due(now + second * S, 50)
    assert round(pace.rate_hz, 6) == 1.0


def test_late_wake_drops_missed_frames_instead_of_bursting() -> None:
    """A source woken long after a frame was due sends one frame, not the backlog."""
    pace, now = _calibrated(sustained_hz=20.0)
    assert pace.due(now, 0) == 1
    assert pace.due(now + 2 * S, 0) == 1
    assert pace.due(now + 2 * S + 1, 0) == 0
