"""Failover bookkeeping: which link a request takes, and what a lost link's requests do."""

from __future__ import annotations

import pytest

from vigil.bus.deadline import Deadline
from vigil.bus.envelope import Envelope
from vigil.bus.failover import Failover, Outstanding

pytestmark = pytest.mark.verifies("SR-RED-001")


def _request(seq: int, deadline: int = 1_000) -> Outstanding:
    envelope = Envelope(schema="infer.request", seq=seq, source="c")
    return Outstanding(seq, envelope, [b"body"], Deadline(deadline), Deadline(deadline + 500))


def test_no_link_is_chosen_before_one_is_up() -> None:
    """A request made before any ingest is connected waits: no link is chosen."""
    failover = Failover(2, max_waiting=10)
    assert failover.choose() is None


def test_the_first_link_up_is_kept_while_it_stays_up() -> None:
    """Hot standby: requests go to the link that came up first, also once the next is up."""
    failover = Failover(2, max_waiting=10)
    failover.went_up(1)
    failover.went_up(0)
    assert failover.choose() == 1


def test_a_lost_link_gives_back_its_requests_for_the_next_one() -> None:
    """What a lost link held is returned, oldest first, to be re-sent on the one still up."""
    failover = Failover(2, max_waiting=10)
    failover.went_up(0)
    failover.went_up(1)
    for seq in (2, 1):
        request = _request(seq)
        failover.add(request)
        failover.sent(request, 0)
    resend = failover.went_down(0)
    assert [r.seq for r in resend] == [1, 2]
    assert failover.choose() == 1
    assert len(failover.losses) == 1


def test_requests_wait_while_no_link_is_up_and_go_when_one_comes() -> None:
    """With every link down a lost link's requests wait, and go out when a link comes up."""
    failover = Failover(1, max_waiting=10)
    failover.went_up(0)
    request = _request(1)
    failover.add(request)
    failover.sent(request, 0)
    assert failover.went_down(0) == []
    assert [r.seq for r in failover.went_up(0)] == [1]


def test_a_resend_is_counted() -> None:
    """Sending a request a second time counts as a re-send."""
    failover = Failover(1, max_waiting=10)
    request = _request(1)
    failover.add(request)
    failover.sent(request, 0)
    failover.sent(request, 0)
    assert failover.resent == 1


def test_waiting_is_bounded() -> None:
    """No more than `max_waiting` requests wait for a link."""
    failover = Failover(1, max_waiting=2)
    failover.add(_request(1))
    assert failover.has_room()
    failover.add(_request(2))
    assert not failover.has_room()


def test_a_waiting_request_ends_at_its_deadline_a_sent_one_after_grace() -> None:
    """A request that never left ends at its deadline; one that went out gets the grace."""
    failover = Failover(1, max_waiting=10)
    waiting, sent = _request(1, deadline=100), _request(2, deadline=100)
    failover.add(waiting)
    failover.add(sent)
    failover.sent(sent, 0)
    assert failover.expired(99) is None
    assert failover.expired(100) == (waiting, False)
    assert failover.expired(599) is None
    assert failover.expired(600) == (sent, True)
