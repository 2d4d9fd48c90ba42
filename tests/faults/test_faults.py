"""Faults injected into the running pipeline: each detected, handled and logged; nothing lost."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import msgspec
import numpy as np
import pytest
import zmq

from vigil.bus.pubsub import Publisher, Subscriber
from vigil.errors import Unavailable
from vigil.launch import Launcher
from vigil.nodes.logger.store import read_entries, verify_store
from vigil.nodes.worker import FAULT_ABORT_STREAM
from vigil.schemas import AuditId, Heartbeat, SafetyState, Topic
from vigil.testing.pipeline import LoadDriver, child_pid, restarted

pytestmark = pytest.mark.verifies(
    "SR-ERR-001", "SR-DLN-002", "SR-WDG-001", "SR-WDG-002", "SR-WDG-003", "SR-SUP-001", "SR-SUP-002"
)


def _sealed(launcher: Launcher) -> list[tuple[str, dict[str, object]]]:
    store = launcher.run.path / "log.store"
    return [(e.event, msgspec.msgpack.decode(e.payload)) for e in read_entries(store)]


def _assert_nothing_lost(driver: LoadDriver) -> None:
    driver.drain()
    assert driver.outcomes
    lost = driver.lost()
    assert not lost, f"{len(lost)} requests ended without any reply from the pipeline"


def _assert_transitions_sealed(launcher: Launcher, driver: LoadDriver) -> None:
    """Every transition the bus showed is in the sealed log, and the log verifies."""
    wanted = [(s, c) for _, s, c in driver.states]
    deadline = time.monotonic() + 20
    while True:
        launcher.supervise(0.05)
        sealed = [(p["state"], p["cause"]) for e, p in _sealed(launcher) if e == "health.state"]
        if all((str(s), c) in sealed for s, c in wanted):
            break
        assert time.monotonic() < deadline, f"transitions missing from the log: {wanted}"
    assert verify_store(launcher.run.path / "log.store").ok


def test_sigkill_worker_loses_no_request(pipeline: tuple[Launcher, LoadDriver]) -> None:
    """SIGKILL a worker under load: its in-flight work is re-dispatched, it is restarted,
    the system degrades and recovers; every request ends with a result or a typed error."""
    launcher, driver = pipeline
    pid = child_pid(launcher, "worker.1")
    killed = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    driver.run_until(lambda: driver.reached(SafetyState.DEGRADED, killed), 10, "degraded")
    driver.run_until(lambda: restarted(launcher, "worker.1", pid), 15, "restart")
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, killed), 20, "recovered")
    _assert_nothing_lost(driver)
    assert any(o.result for o in driver.ended_since(killed))
    _assert_transitions_sealed(launcher, driver)


def test_hung_worker_is_killed_and_restarted(pipeline: tuple[Launcher, LoadDriver]) -> None:
    """SIGSTOP a worker (a hang: alive, silent): its work moves on, the state degrades, the
    launcher kills it once its hang limit passed and restarts it, and the state recovers."""
    launcher, driver = pipeline
    pid = child_pid(launcher, "worker.2")
    stopped = time.monotonic_ns()
    os.kill(pid, signal.SIGSTOP)
    try:
        driver.run_until(lambda: driver.reached(SafetyState.DEGRADED, stopped), 10, "degraded")
        driver.run_until(lambda: restarted(launcher, "worker.2", pid), 20, "hung one restarted")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert any(what == "hung" and who == "worker.2" for _, who, what in launcher.events)
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, stopped), 20, "recovered")
    _assert_nothing_lost(driver)
    _assert_transitions_sealed(launcher, driver)


def test_engine_abort_is_isolated_to_its_worker(pipeline: tuple[Launcher, LoadDriver]) -> None:
    """A crash inside the inference engine kills only its worker: the poisoned request ends
    with a typed error after one re-dispatch, every other request is served."""
    launcher, driver = pipeline
    ingest_pid = child_pid(launcher, "ingest")
    aborted = time.monotonic_ns()
    poison = driver.send(stream_id=FAULT_ABORT_STREAM)
    driver.run_until(lambda: driver.reached(SafetyState.DEGRADED, aborted), 10, "degraded")
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, aborted), 30, "recovered")
    _assert_nothing_lost(driver)
    assert child_pid(launcher, "ingest") == ingest_pid
    failed = [o for o in driver.ended_since(aborted) if o.error is not None]
    assert any(isinstance(o.error, Unavailable) for o in failed), poison
    assert any(o.result for o in driver.ended_since(aborted))
    _assert_transitions_sealed(launcher, driver)


def test_killed_proxy_is_restarted_and_subscribers_reconnect(
    pipeline: tuple[Launcher, LoadDriver],
) -> None:
    """Kill the pub/sub proxy: the launcher restarts it, heartbeats flow again through it,
    the request path (which never crosses the proxy) keeps serving."""
    launcher, driver = pipeline
    pid = child_pid(launcher, "proxy")
    killed = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    driver.run_until(lambda: restarted(launcher, "proxy", pid), 15, "proxy restart")
    with Subscriber(launcher.ctx, launcher.run.sub, [Topic.HEARTBEAT]) as beats:
        seen: set[str] = set()
        driver.run_until(
            lambda: _collect_beats(beats, seen) >= {"ingest", "watchdog", "worker.1"},
            15,
            "heartbeats through the new proxy",
        )
    _assert_nothing_lost(driver)
    assert any(o.result for o in driver.ended_since(killed))
    deadline = time.monotonic() + 20
    while not _proxy_restart_sealed(launcher):
        assert time.monotonic() < deadline, "the proxy's restart never reached the sealed log"
        driver.step()


def _proxy_restart_sealed(launcher: Launcher) -> bool:
    return any(
        e == "audit.event" and p["event"] == AuditId.NODE_RESTARTED and "proxy" in str(p)
        for e, p in _sealed(launcher)
    )


def _collect_beats(sub: Subscriber, seen: set[str]) -> set[str]:
    while (got := sub.recv(0)) is not None:
        if isinstance(got.body, Heartbeat):
            seen.add(got.body.node)
    return seen


def test_slow_subscriber_never_blocks_publishers(pipeline: tuple[Launcher, LoadDriver]) -> None:
    """A subscriber that stops reading fills its queue; publishers drop for it instead of
    blocking, the pipeline keeps its pace, and the drops show up as sequence gaps."""
    launcher, driver = pipeline
    # A topic of its own: nothing else in the pipeline subscribes to it, only the slow reader.
    topic = "test/flood"
    beat = Heartbeat(node="flood", instance=0, pid=1, period_ms=1)
    with (
        zmq.Context() as ctx,
        Subscriber(ctx, launcher.run.sub, [topic], hwm=4) as slow,
        Publisher(ctx, launcher.run.pub, source="flood", hwm=8) as flood,
    ):
        slow.socket.setsockopt(zmq.RCVBUF, 4096)
        while slow.recv(50) is None:  # joined once a first message gets through
            flood.publish(topic, beat)
        # From here on the reader reads nothing for a while. NOBLOCK: a publisher that would
        # wait for the slow reader raises zmq.Again instead (a PUB drops instead).
        for _ in range(20_000):
            flood.socket.send_multipart(flood.encode(topic, beat), flags=zmq.NOBLOCK, copy=False)
        before = len(driver.outcomes)
        driver.run_for(1.0)
        assert len(driver.outcomes) > before  # the pipeline kept serving meanwhile
        for _ in range(100_000):  # what is queued for the slow reader, then stop
            if slow.recv(100) is None:
                break
    assert slow.lost > 0
    _assert_nothing_lost(driver)


def test_killed_watchdog_resumes_from_the_current_state(
    pipeline: tuple[Launcher, LoadDriver],
) -> None:
    """Kill the watchdog while DEGRADED: the restarted one takes over DEGRADED from the
    latched state instead of starting NORMAL, then recovers as usual."""
    launcher, driver = pipeline
    worker = child_pid(launcher, "worker.2")
    stopped = time.monotonic_ns()
    os.kill(worker, signal.SIGSTOP)
    try:
        driver.run_until(lambda: driver.reached(SafetyState.DEGRADED, stopped), 10, "degraded")
        watchdog = child_pid(launcher, "watchdog")
        os.kill(watchdog, signal.SIGKILL)
        driver.run_until(lambda: restarted(launcher, "watchdog", watchdog), 15, "restart")
        driver.run_until(
            lambda: any("resumed" in c for _, _, c in driver.states), 10, "resumed state"
        )
        resumed = next(s for _, s, c in driver.states if "resumed" in c)
        assert resumed is not SafetyState.NORMAL
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed as hung meanwhile
            os.kill(worker, signal.SIGCONT)
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, stopped), 30, "recovered")
    _assert_nothing_lost(driver)
    _assert_transitions_sealed(launcher, driver)


def test_killed_logger_records_the_gap(pipeline: tuple[Launcher, LoadDriver]) -> None:
    """Kill the logger, publish diagnostics while it is down: the restarted logger records
    their loss as a LOG_GAP audit entry; the store still verifies."""
    launcher, driver = pipeline
    pid = child_pid(launcher, "logger")
    os.kill(pid, signal.SIGKILL)
    for _ in range(5):  # rejected requests: the ingest publishes a diagnostic for each
        driver.send(stream_id="bad", frame=np.zeros((4, 4, 2), dtype=np.uint8))
        driver.step()
    driver.run_until(lambda: restarted(launcher, "logger", pid), 15, "logger restart")
    driver.send(stream_id="bad", frame=np.zeros((4, 4, 2), dtype=np.uint8))
    # Other topics may have lost messages too (the state changes the logger's death caused):
    # wait for the gap that names the diagnostics, whichever gap is sealed first.
    deadline = time.monotonic() + 20
    while True:
        driver.step()
        gaps = [
            p for e, p in _sealed(launcher) if e == "audit.event" and p["event"] == AuditId.LOG_GAP
        ]
        if any("diag/event" in str(gap) for gap in gaps):
            break
        assert time.monotonic() < deadline, f"no LOG_GAP naming diag/event recorded: {gaps}"
    _assert_nothing_lost(driver)
    assert verify_store(launcher.run.path / "log.store").ok


def test_killed_ingest_loses_no_request(pipeline: tuple[Launcher, LoadDriver]) -> None:
    """Kill the serving ingest: the client re-sends what it held to the standby ingest at
    once, which the workers serve too; nothing is lost, the killed one is restarted and every
    worker offers its capacity to it again."""
    launcher, driver = pipeline
    pid = child_pid(launcher, "ingest")
    killed = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    driver.run_until(lambda: restarted(launcher, "ingest", pid), 15, "ingest restart")
    back = time.monotonic_ns()

    def serving() -> set[str]:
        return {o.result.worker for o in driver.ended_since(back) if o.result is not None}

    driver.run_until(
        lambda: serving() == {"worker.1", "worker.2"}, 20, "both workers serving after restart"
    )
    _assert_nothing_lost(driver)
    assert any(o.result for o in driver.ended_since(killed))
