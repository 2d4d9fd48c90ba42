"""Replies never block: a client that does not read loses replies, counted and reported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from vigil.bus.channel import Channel
from vigil.nodes.ingest._replies import Delivery, Replies
from vigil.schemas import DiagCode, ErrorCode, ErrorReply, RepliesDropped

pytestmark = pytest.mark.verifies("SR-RL-003")

_REPLY = msgspec.msgpack.encode(ErrorReply(code=ErrorCode.INTERNAL, message="x" * 200))
_TYPE = ErrorReply


@pytest.fixture
def pair(short_tmp: Path) -> Iterator[tuple[Channel, Channel, bytes]]:
    """A ROUTER as the ingest sets it up (small backlog, mandatory routing) and one DEALER."""
    endpoint = f"ipc://{short_tmp}/replies"
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as router, ctx.socket(zmq.DEALER) as dealer:
        for sock in (router, dealer):
            sock.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, 4)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        dealer.setsockopt(zmq.RCVHWM, 4)
        router.bind(endpoint)
        dealer.connect(endpoint)
        dealer.send(b"hello")
        assert router.poll(20_000)
        identity = router.recv_multipart()[0]
        yield Channel(router, source="ingest", routed=True), Channel(dealer, source="c"), identity


def _fill(replies: Replies, server: Channel, identity: bytes) -> list[int]:
    """Send replies until one is dropped; the sequence numbers of those that went out."""
    sent = []
    for seq in range(1, 1_000_000):
        delivery = replies.send(identity, _REPLY, server.envelope(_TYPE, seq=seq))
        if delivery is Delivery.DROPPED:
            return sent
        sent.append(seq)
    raise AssertionError("the client's queue never filled")


def test_a_client_that_does_not_read_loses_replies_and_is_told_which(
    pair: tuple[Channel, Channel, bytes],
) -> None:
    """While the client does not read, replies go out until its queue is full and are
    dropped from then on (never queued without bound). When it reads, it gets every reply
    that went out, in order, and before the first one after a loss, a notice naming exactly
    the replies it lost.

    The socket's I/O thread empties the queue towards the client at its own pace, so a reply
    may find room again after one was dropped: each reply's fate is taken as it was
    reported, not assumed."""
    server, client, identity = pair
    replies = Replies(server)
    expected: list[int | list[int]] = []  # a reply's seq, or a notice's lost seqs
    lost: list[int] = []
    seq = 0
    while replies.dropped < 10:
        seq += 1
        assert seq < 1_000_000, "the client's queue never filled"
        reported = replies.reported
        delivery = replies.send(identity, _REPLY, server.envelope(_TYPE, seq=seq))
        if replies.reported > reported:  # the notice of earlier losses went out first
            expected.append(lost)
            lost = []
        if delivery is Delivery.SENT:
            expected.append(seq)
        else:
            assert delivery is Delivery.DROPPED
            lost.append(seq)
    assert replies.owed == 1
    received: list[int | list[int]] = []
    for _ in expected:
        incoming = client.recv()
        body = incoming.body
        received.append(
            list(body.seqs) if isinstance(body, RepliesDropped) else incoming.envelope.seq
        )
    assert received == expected
    while replies.owed:
        replies.retry()
        client.socket.poll(100)
    notice = client.recv().body
    assert isinstance(notice, RepliesDropped)
    assert (notice.count, notice.seqs) == (len(lost), lost)
    assert notice.diag_code == DiagCode.REPLY_DROPPED
    assert replies.dropped == 10
    assert replies.send(identity, _REPLY, server.envelope(_TYPE, seq=999)) is Delivery.SENT


def test_a_reply_to_a_client_that_left_is_counted_not_queued(
    pair: tuple[Channel, Channel, bytes],
) -> None:
    """A reply to an identity with no connection fails at once (mandatory routing)."""
    server, _, _ = pair
    replies = Replies(server)
    assert replies.send(b"gone", _REPLY, server.envelope(_TYPE, seq=1)) is Delivery.GONE
    assert replies.gone == 1


def test_the_table_of_owed_reports_is_bounded(pair: tuple[Channel, Channel, bytes]) -> None:
    """Past `max_peers` clients owed a report, the oldest debt is forgotten."""
    server, _, identity = pair
    replies = Replies(server, max_peers=1)
    _fill(replies, server, identity)
    replies._drop(b"other", 5)
    assert replies.owed == 1
