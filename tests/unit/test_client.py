"""The client never blocks the caller: a request the ingest cannot take ends typed at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from vigil.bus.deadline import Deadline
from vigil.bus.failover import Outstanding
from vigil.client import AsyncClient, Client
from vigil.errors import Unavailable
from vigil.schemas import ErrorCode, InferRequest

pytestmark = pytest.mark.verifies("SR-ERR-001")


def test_a_request_with_nowhere_to_go_is_unavailable_not_a_hang(short_tmp: Path) -> None:
    """With no ingest behind the endpoint, requests queue up to the socket's bound; the next
    one raises Unavailable instead of blocking the caller for ever."""
    frame = np.zeros((2, 2, 3), dtype=np.uint8)
    with Client(f"ipc://{short_tmp}/nobody", name="lonely") as client:
        with pytest.raises(Unavailable) as caught:
            for ts in range(1, 100_000):
                client.submit(frame, stream_id="s", frame_ts_us=ts)
        assert caught.value.reply.code is ErrorCode.UNAVAILABLE
        assert 0 < client.in_flight < 100_000


def test_an_async_link_that_cannot_take_a_request_says_so(short_tmp: Path) -> None:
    """An asyncio link with no peer leaves a request unsent (its send future holds
    zmq.Again), instead of counting it as sent and leaving it to its deadline."""

    async def attempt() -> tuple[bool, int | None]:
        async with AsyncClient(f"ipc://{short_tmp}/nobody") as client:
            deadline = Deadline.after(1_000_000_000, time.monotonic_ns())
            envelope = client.channel.envelope(InferRequest, seq=client.channel.next_seq())
            request = Outstanding(envelope.seq, envelope, [b"body"], deadline, deadline)
            return client._send(request, 0), request.link

    assert asyncio.run(attempt()) == (False, None)


def test_a_link_to_a_remote_ingest_carries_the_pixels(short_tmp: Path) -> None:
    """A frame in shared memory goes as its descriptor to an ingest on this host; re-sent to
    one elsewhere (tcp) it carries its pixels, copied from the slot, which stays lent."""
    frame = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    decode = msgspec.msgpack.Decoder(InferRequest).decode
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as local, ctx.socket(zmq.ROUTER) as remote:
        for ingest in (local, remote):
            ingest.setsockopt(zmq.LINGER, 0)
        local.bind(f"ipc://{short_tmp}/ingest")
        port = remote.bind_to_random_port("tcp://127.0.0.1")
        endpoints = [f"ipc://{short_tmp}/ingest", f"tcp://127.0.0.1:{port}"]
        with Client(endpoints, ctx=ctx, pool_slots=1) as client:
            client.submit(frame, stream_id="s", frame_ts_us=1, deadline_s=30)
            assert local.poll(10_000), "nothing reached the local ingest"
            _, _, body = local.recv_multipart()
            assert decode(body).shm is not None  # the descriptor alone
            local.close()
            until = time.monotonic() + 10
            while not remote.poll(0):
                assert time.monotonic() < until, "the request was not re-sent"
                client.poll(50)
            _, _, body, pixels = remote.recv_multipart()
            assert decode(body).shm is None and pixels == frame.tobytes()
            assert client.slots.pool is not None and client.slots.pool.free == 0
