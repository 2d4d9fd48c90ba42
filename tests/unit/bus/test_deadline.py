"""Deadlines on the monotonic clock, converted to and from the wall clock once per hop."""

from __future__ import annotations

from vigil.bus.deadline import Deadline

WALL = 1_700_000_000_000_000_000  # a wall-clock reading
MONO = 5_000_000_000  # the monotonic clock read at the same moment


def test_after_counts_the_budget_from_now() -> None:
    """A deadline 2 s after now is due at now + 2 s on the monotonic clock."""
    assert Deadline.after(2_000_000_000, MONO) == Deadline(MONO + 2_000_000_000)


def test_from_wall_keeps_the_time_left() -> None:
    """A wall deadline 3 s ahead of the wall clock is 3 s ahead on the monotonic clock."""
    deadline = Deadline.from_wall(WALL + 3_000_000_000, now_wall_ns=WALL, now_mono_ns=MONO)
    assert deadline.remaining_ns(MONO) == 3_000_000_000


def test_to_wall_inverts_from_wall() -> None:
    """Converting to the wall clock and back, with the same readings, changes nothing."""
    deadline = Deadline.after(750, MONO)
    wall = deadline.to_wall_ns(now_wall_ns=WALL, now_mono_ns=MONO)
    assert wall == WALL + 750
    assert Deadline.from_wall(wall, now_wall_ns=WALL, now_mono_ns=MONO) == deadline


def test_a_later_hop_with_another_wall_offset_keeps_the_time_left() -> None:
    """Two processes' monotonic clocks differ; the time left survives the hop between them."""
    sent = Deadline.after(1_000, MONO).to_wall_ns(now_wall_ns=WALL, now_mono_ns=MONO)
    other_mono = 42  # the receiver's monotonic clock, read at the same wall instant
    received = Deadline.from_wall(sent, now_wall_ns=WALL, now_mono_ns=other_mono)
    assert received.remaining_ns(other_mono) == 1_000


def test_expired_at_and_after_the_deadline_not_before() -> None:
    """A deadline has expired when it is due exactly now, and after; not a nanosecond before."""
    deadline = Deadline(100)
    assert [deadline.expired(t) for t in (99, 100, 101)] == [False, True, True]


def test_remaining_turns_negative_once_passed() -> None:
    """The time left counts down through zero."""
    deadline = Deadline(100)
    assert [deadline.remaining_ns(t) for t in (40, 100, 130)] == [60, 0, -30]


def test_a_budget_of_zero_or_less_is_expired_on_arrival() -> None:
    """A request with no time left is expired at the moment it is received."""
    assert Deadline.after(0, MONO).expired(MONO)
    assert Deadline.after(-1, MONO).expired(MONO)
    assert not Deadline.after(1, MONO).expired(MONO)


def test_later_adds_a_grace_period() -> None:
    """`later` moves the deadline, leaving the original as it was."""
    deadline = Deadline(100)
    assert deadline.later(50) == Deadline(150)
    assert deadline == Deadline(100)


def test_deadlines_order_by_due_time() -> None:
    """The earliest deadline sorts first (a heap of deadlines pops the most urgent)."""
    assert sorted([Deadline(3), Deadline(1), Deadline(2)]) == [
        Deadline(1),
        Deadline(2),
        Deadline(3),
    ]
    assert min(Deadline(7), Deadline(5)) == Deadline(5)
