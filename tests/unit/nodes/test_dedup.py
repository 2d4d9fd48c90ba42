"""Recent answers by request id: a repeat is answered, not run again, within a window."""

from __future__ import annotations

import pytest

from vigil.nodes._dedup import RecentAnswers

pytestmark = pytest.mark.verifies("SR-RED-002")


def test_a_repeat_gets_the_kept_answer() -> None:
    """The answer a request got is found again by its id, and the repeat is counted."""
    recent: RecentAnswers[str] = RecentAnswers(4)
    recent.keep(b"a", "result a")
    assert recent.get(b"a") == "result a"
    assert recent.repeats == 1


def test_an_unknown_or_empty_id_is_no_repeat() -> None:
    """A request never answered, or one without an id, is not a repeat."""
    recent: RecentAnswers[str] = RecentAnswers(4)
    recent.keep(b"", "anonymous")
    assert recent.get(b"") is None
    assert recent.get(b"b") is None
    assert len(recent) == 0


def test_the_window_keeps_the_newest_answers() -> None:
    """Past the window's size, the oldest answer is forgotten first."""
    recent: RecentAnswers[int] = RecentAnswers(2)
    for i in range(3):
        recent.keep(bytes([i]), i)
    assert recent.get(b"\x00") is None
    assert (recent.get(b"\x01"), recent.get(b"\x02")) == (1, 2)


def test_a_window_of_zero_keeps_nothing() -> None:
    """Size 0 turns the memory off."""
    recent: RecentAnswers[int] = RecentAnswers(0)
    recent.keep(b"a", 1)
    assert recent.get(b"a") is None
