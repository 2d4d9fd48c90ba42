"""Admission from the measured service time, against a real ingest and a worker the test plays.

The test speaks the worker protocol itself (credit, dispatched requests, results naming their
batch time), so the ingest's prices are exact: what it must admit and refuse is arithmetic.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq

from vigil.bus.channel import Channel
from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.errors import DeadlineExceeded, RequestError, ResourceExhausted
from vigil.launch import Launcher, load
from vigil.nodes.ingest import IngestConfig
from vigil.schemas import (
    DiagCode,
    ErrorCode,
    ErrorReply,
    InferRequest,
    InferResult,
    PerceptionOutput,
    WorkerCredit,
)
from vigil.testing.launchfiles import launch_file, node, write

pytestmark = pytest.mark.verifies("SR-RL-002", "SR-DLN-003", "SR-ERR-002")

FRAME = np.zeros((8, 8, 3), np.uint8)
BATCH_US = 200_000  # what the test's worker reports each batch took


@dataclass
class _Front:
    launcher: Launcher
    worker: Channel
    client: Client

    def dispatched(self) -> int:
        """The id of the next request the ingest hands the worker."""
        assert self.worker.socket.poll(20_000), "nothing was dispatched"
        incoming = self.worker.recv()
        assert isinstance(incoming.body, InferRequest)
        return incoming.envelope.seq

    def answer(self, rid: int) -> None:
        """Answer a dispatched request as a batch of one that took BATCH_US."""
        result = InferResult(
            stream_id="s",
            frame_ts_us=1,
            output=PerceptionOutput(confidence=1.0, timestamp_us=1, boxes=[]),
            model="m",
            version="1",
            batch_size=1,
            infer_us=BATCH_US,
        )
        self.worker.send(result, envelope=self.worker.envelope(result, seq=rid))


@pytest.fixture
def front(short_tmp: Path) -> Iterator[_Front]:
    """A launched ingest, one worker connection the test speaks for, and one client."""
    ingest = IngestConfig(require_model=False, default_deadline_ms=10_000, publish_requests=False)
    path = write(launch_file("admission", node("ingest", ingest)), short_tmp)
    run = RunDir(short_tmp / "run")
    with (
        Launcher(load(path, run.path), run) as launcher,
        zmq.Context() as ctx,
        ctx.socket(zmq.DEALER) as dealer,
    ):
        launcher.start()
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(run.ipc("workers"))
        worker = Channel(dealer, source="worker")
        worker.send(WorkerCredit(credit=1, model="m", pid=os.getpid(), host=socket.gethostname()))
        with Client(run.ipc("ingest"), name="admission", ctx=ctx) as client:
            yield _Front(launcher, worker, client)


def _outcome(client: Client, seq: int) -> InferResult | RequestError:
    while True:
        reply = client.poll(20_000)
        assert reply is not None, "no reply"
        if reply[0] == seq:
            return reply[1]


def test_what_cannot_be_served_in_time_is_refused_at_once(front: _Front) -> None:
    """With 200 ms per request measured, one worker holding one request, and budgets of
    2.125 s, the ingest queues what its estimate (x1.25) says will finish in time and refuses
    the rest at once with RESOURCE_EXHAUSTED (DIA-2051), instead of letting them miss their
    deadline; a budget below the measured 200 ms is the client's fault (DIA-3003)."""
    client = front.client
    first = client.submit(FRAME, stream_id="s", frame_ts_us=1, deadline_s=10)
    front.answer(front.dispatched())  # the ingest has measured one batch now
    assert isinstance(_outcome(client, first), InferResult)
    held = client.submit(FRAME, stream_id="s", frame_ts_us=2, deadline_s=10)
    assert front.dispatched() > 0  # the worker holds it and says nothing yet
    # Waits of 400, 600, ..., 1600 ms (x1.25: 500 ... 2000 ms) fit a budget of 2.125 s; the
    # next, 1800 ms (2250), does not: 125 ms to spare either way.
    burst = [
        client.submit(FRAME, stream_id="s", frame_ts_us=3 + n, deadline_s=2.125) for n in range(10)
    ]
    refused = []
    for seq in burst[7:]:
        outcome = _outcome(client, seq)
        assert isinstance(outcome, ResourceExhausted), outcome
        refused.append(outcome.reply)
    assert {r.diag_code for r in refused} == {DiagCode.OVERLOADED}
    assert all(r.retry_after_ms >= 1600 for r in refused)
    late = client.submit(FRAME, stream_id="s", frame_ts_us=20, deadline_s=0.05)
    outcome = _outcome(client, late)
    assert isinstance(outcome, DeadlineExceeded), outcome
    assert outcome.reply.diag_code == DiagCode.DEADLINE_INFEASIBLE
    assert held and client.in_flight == 8  # the held request and the seven admitted wait


def test_a_new_frame_size_waits_for_its_first_measurement(front: _Front) -> None:
    """A second frame of a size never measured is not refused for want of a price: it waits
    in the dispatcher while the first one runs, then runs itself (which worker may take
    unpriced work is the dispatcher's unit test)."""
    client = front.client
    first = client.submit(FRAME, stream_id="s", frame_ts_us=1, deadline_s=10)
    front.answer(front.dispatched())
    assert isinstance(_outcome(client, first), InferResult)
    large = np.zeros((32, 32, 3), np.uint8)
    probe = client.submit(large, stream_id="s", frame_ts_us=2, deadline_s=10)
    rid = front.dispatched()
    waiting = client.submit(large, stream_id="s", frame_ts_us=3, deadline_s=10)
    front.answer(rid)
    assert isinstance(_outcome(client, probe), InferResult)
    front.answer(front.dispatched())
    assert isinstance(_outcome(client, waiting), InferResult)


def test_a_request_naming_a_model_no_worker_serves_is_refused(front: _Front) -> None:
    """A request naming another model than the one its workers serve is refused with its own
    code (INVALID_ARGUMENT, DIA-2030), never served by whatever model is loaded."""
    client = front.client
    other = client.submit(FRAME, stream_id="s", frame_ts_us=1, deadline_s=10, model="other")
    outcome = _outcome(client, other)
    assert isinstance(outcome, RequestError), outcome
    assert (outcome.reply.field, outcome.reply.diag_code) == ("$.model", DiagCode.UNKNOWN_MODEL)
    served = client.submit(FRAME, stream_id="s", frame_ts_us=2, deadline_s=10, model="m")
    front.answer(front.dispatched())
    assert isinstance(_outcome(client, served), InferResult)


def test_every_error_names_a_diagnostic_code(front: _Front) -> None:
    """A worker's error that names no diagnostic code reaches the client with one."""
    client = front.client
    seq = client.submit(FRAME, stream_id="s", frame_ts_us=1, deadline_s=10)
    rid = front.dispatched()
    late = ErrorReply(code=ErrorCode.DEADLINE_EXCEEDED, message="deadline passed")
    front.worker.send(late, envelope=front.worker.envelope(late, seq=rid))
    outcome = _outcome(client, seq)
    assert isinstance(outcome, DeadlineExceeded), outcome
    assert outcome.reply.diag_code == DiagCode.DEADLINE_EXCEEDED
