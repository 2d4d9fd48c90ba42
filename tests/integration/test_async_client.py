"""The asyncio client against the launched pipeline: many in flight, typed errors, deadlines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.asyncio

from vigil.client import AsyncClient
from vigil.errors import DeadlineExceeded, InvalidArgument, Unavailable
from vigil.launch import Launcher
from vigil.nodes._scene import render_scene
from vigil.schemas import DiagCode, InferResult


def test_concurrent_requests_each_get_their_own_result(launched: Launcher) -> None:
    """Sixteen requests in flight at once each end with the result of their own frame."""

    async def scenario() -> list[InferResult]:
        async with AsyncClient(launched.run.ipc("ingest"), name="aclient") as client:
            results = await asyncio.gather(
                *(
                    client.infer(
                        render_scene(i, 96, 160),
                        stream_id=f"cam{i % 4}",
                        frame_ts_us=1000 + i,
                        deadline_s=30,
                    )
                    for i in range(16)
                )
            )
            assert client.in_flight == 0
            return results

    results = asyncio.run(scenario())
    assert [(r.stream_id, r.frame_ts_us) for r in results] == [
        (f"cam{i % 4}", 1000 + i) for i in range(16)
    ]
    assert {r.model for r in results} == {"ppocr-det"}


def test_invalid_frame_raises_invalid_argument_beside_valid_ones(launched: Launcher) -> None:
    """A broken frame raises InvalidArgument naming its field; its neighbours still succeed."""

    async def scenario() -> tuple[list[object], InvalidArgument]:
        async with AsyncClient(launched.run.ipc("ingest"), name="aclient") as client:
            frame = render_scene(0, 96, 160)
            outcomes = await asyncio.gather(
                client.infer(frame, stream_id="good", frame_ts_us=1, deadline_s=30),
                client.infer(
                    np.zeros((8, 8, 4), np.uint8), stream_id="bad", frame_ts_us=1, deadline_s=30
                ),
                client.infer(frame, stream_id="good2", frame_ts_us=1, deadline_s=30),
                return_exceptions=True,
            )
            with pytest.raises(InvalidArgument) as caught:
                await client.infer(frame, stream_id="good", frame_ts_us=1, deadline_s=30)
            return outcomes, caught.value

    outcomes, repeated = asyncio.run(scenario())
    assert isinstance(outcomes[0], InferResult) and isinstance(outcomes[2], InferResult)
    assert isinstance(outcomes[1], InvalidArgument)
    assert outcomes[1].reply.field == "$.image.shape"
    assert outcomes[1].reply.diag_code == DiagCode.RANGE_OR_SEQUENCE
    # The same timestamp again on a stream breaks the per-stream sequence rule.
    assert repeated.reply.field == "$.frame_ts_us"


def test_unreachable_ingest_ends_in_local_unavailable(short_tmp: Path) -> None:
    """With no ingest to take it, a request still ends: Unavailable at its deadline."""

    async def scenario() -> Unavailable:
        async with AsyncClient(f"ipc://{short_tmp}/nobody", name="aclient") as client:
            with pytest.raises(Unavailable) as caught:
                await client.infer(
                    np.zeros((4, 4, 3), np.uint8), stream_id="s", frame_ts_us=1, deadline_s=0.05
                )
            assert client.in_flight == 0
            return caught.value

    error = asyncio.run(scenario())
    assert error.reply.message == "no ingest reachable before the deadline"


def test_silent_ingest_ends_in_local_deadline_exceeded(short_tmp: Path) -> None:
    """An ingest that takes a request and never answers: DeadlineExceeded after deadline +
    grace."""
    endpoint = f"ipc://{short_tmp}/silent"

    async def scenario() -> DeadlineExceeded:
        ctx = zmq.asyncio.Context()
        silent = ctx.socket(zmq.ROUTER)
        silent.setsockopt(zmq.LINGER, 0)
        silent.bind(endpoint)
        try:
            async with AsyncClient(endpoint, name="aclient", ctx=ctx) as client:
                with pytest.raises(DeadlineExceeded) as caught:
                    await client.infer(
                        np.zeros((4, 4, 3), np.uint8), stream_id="s", frame_ts_us=1, deadline_s=1
                    )
                assert client.in_flight == 0
                return caught.value
        finally:
            silent.close()
            ctx.term()

    error = asyncio.run(scenario())
    assert error.reply.message == "no reply from the ingest"


def test_closing_fails_requests_still_waiting(short_tmp: Path) -> None:
    """Closing the client ends every waiting request with Unavailable, not a hang."""

    async def scenario() -> BaseException | None:
        client = AsyncClient(f"ipc://{short_tmp}/nobody", name="aclient")
        async with client:
            pending = asyncio.ensure_future(
                client.infer(
                    np.zeros((4, 4, 3), np.uint8), stream_id="s", frame_ts_us=1, deadline_s=60
                )
            )
            while client.in_flight == 0:
                await asyncio.sleep(0)  # yields to the request task; no wall-clock wait
        await asyncio.wait_for(asyncio.wait([pending]), 5)
        return pending.exception()

    assert isinstance(asyncio.run(scenario()), Unavailable)
