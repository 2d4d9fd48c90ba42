"""The evidence of requests the ingest answers on its way out still reaches the sealed log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from vigil.bus.envelope import TraceContext
from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.launch import Launcher, load
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig, read_entries
from vigil.schemas import Heartbeat, Outcome, RequestEvidence, Topic, schema_id
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.pipeline import FRAME

pytestmark = pytest.mark.verifies("SR-LOG-003")

HELD = 3
WAIT_S = 30.0


@pytest.fixture
def launcher(short_tmp: Path) -> Iterator[Launcher]:
    """A logger and an ingest with no worker: whatever it admits stays queued."""
    launch = launch_file(
        "held",
        node("logger", LoggerConfig(store=StoreConfig(path="log.store"))),
        node("ingest", IngestConfig(require_model=False, default_deadline_ms=60_000)),
    )
    run = RunDir(short_tmp / "run")
    with Launcher(load(write(launch, short_tmp), run.path), run) as launcher:
        launcher.start()
        yield launcher


def _sealed(run: Path) -> dict[bytes, RequestEvidence]:
    event = schema_id(RequestEvidence)
    return {
        e.trace_id: msgspec.msgpack.decode(e.payload, type=RequestEvidence)
        for e in read_entries(run / "log.store")
        if e.event == event
    }


def test_requests_failed_at_stop_leave_their_evidence(launcher: Launcher) -> None:
    """Requests still queued when the ingest stops are failed UNAVAILABLE, and each leaves its
    sealed evidence in its trace: what waits to be published goes out before the exit."""
    traces = [TraceContext.new() for _ in range(HELD)]
    with (
        Client(launcher.run.ipc("ingest"), name="held", ctx=launcher.ctx) as client,
        Subscriber(launcher.ctx, launcher.run.sub, [Topic.HEARTBEAT]) as beats,
    ):
        for ts, trace in enumerate(traces, 1):  # a stream's frames go forward in time
            client.submit(FRAME, stream_id="held", frame_ts_us=ts, deadline_s=60, trace=trace)
        deadline = time.monotonic() + WAIT_S
        while True:  # stop only once the ingest has admitted them all
            assert time.monotonic() < deadline, "the ingest never admitted the requests"
            got = beats.recv(100)
            body = got.body if got is not None else None
            if isinstance(body, Heartbeat) and body.detail.get("accepted") == str(HELD):
                break
        ingest = next(c for c in launcher.children if c.plan.label == "ingest")
        launcher.stop(ingest)
    deadline = time.monotonic() + WAIT_S
    while len(sealed := _sealed(launcher.run.path)) < HELD:
        assert time.monotonic() < deadline, f"sealed only {len(sealed)} of {HELD}"
        launcher.supervise(0.1)
    for trace in traces:
        evidence = sealed[trace.trace_id]
        assert (evidence.outcome, evidence.code) == (Outcome.FAILED, "UNAVAILABLE")
