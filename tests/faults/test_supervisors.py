"""The supervisors and state across restarts: who watches the watchdog, what a dead launcher
leaves behind, and what a restarted loader remembers."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from pathlib import Path

import msgspec
import pytest

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, LaunchError, load
from vigil.models.repository import set_latest
from vigil.nodes.logger.store import read_entries, verify_store
from vigil.schemas import AuditId, DiagCode, Heartbeat, NodeExit, SafetyState, Topic
from vigil.testing.pipeline import (
    ExternalLaunch,
    LoadDriver,
    child_pid,
    classifier_launch,
    ingest_names,
    restarted,
)

pytestmark = pytest.mark.verifies("SR-ERR-001")


def _sealed(run: Path) -> list[tuple[str, dict[str, object]]]:
    return [(e.event, msgspec.msgpack.decode(e.payload)) for e in read_entries(run / "log.store")]


@pytest.mark.verifies("SR-SUP-006", "SR-SUP-004")
def test_a_stopped_watchdog_is_stood_in_for_and_replaced(
    pipeline: tuple[Launcher, LoadDriver],
) -> None:
    """SIGSTOP the watchdog: the launcher degrades the state in its place, kills the hung
    watchdog and restarts it; the new one resumes DEGRADED and recovers to NORMAL."""
    launcher, driver = pipeline
    pid = child_pid(launcher, "watchdog")
    stopped = time.monotonic_ns()
    os.kill(pid, signal.SIGSTOP)
    try:
        driver.run_until(lambda: driver.reached(SafetyState.DEGRADED, stopped), 10, "degraded")
        assert any(c == "heartbeat missing: watchdog" for t, _, c in driver.states if t >= stopped)
        driver.run_until(lambda: restarted(launcher, "watchdog", pid), 20, "replaced")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, stopped), 30, "recovered")
    driver.drain()
    assert not driver.lost()


@pytest.mark.verifies("SR-SUP-006")
def test_the_watchdog_sees_the_launcher_fall_silent(short_tmp: Path) -> None:
    """A stopped launcher stops beating: the watchdog degrades the state, refusing nothing,
    and recovers once the launcher runs again."""
    run = RunDir(short_tmp / "run")
    path = classifier_launch(short_tmp, ingests=2)
    with ExternalLaunch(path, run) as launch:
        assert launch.process is not None
        endpoints = [run.ipc(name) for name in ingest_names(2)]
        with LoadDriver(None, run=run, endpoints=endpoints) as driver:
            driver.run_until(lambda: driver.state is SafetyState.NORMAL, 30, "normal")
            stopped = time.monotonic_ns()
            launch.process.send_signal(signal.SIGSTOP)
            try:
                driver.run_until(
                    lambda: driver.reached(SafetyState.DEGRADED, stopped), 10, "degraded"
                )
            finally:
                launch.process.send_signal(signal.SIGCONT)
            assert any("launcher" in c for t, _, c in driver.states if t >= stopped)
            driver.run_until(lambda: driver.reached(SafetyState.NORMAL, stopped), 30, "back")
            driver.drain()
    assert not driver.lost()


@pytest.mark.verifies("SR-SUP-007")
def test_a_killed_launcher_leaves_nodes_that_stop_in_order(short_tmp: Path) -> None:
    """SIGKILL the launcher: every node notices, says why (sealed), and they stop in reverse
    start order, the last started first and the proxy last."""
    run = RunDir(short_tmp / "run")
    path = classifier_launch(short_tmp, ingests=2)
    with ExternalLaunch(path, run) as launch:
        assert launch.process is not None
        order = [n.name for n in run.read_graph().nodes]
        exits = [os.pidfd_open(pid) for pid in launch.pids().values()]
        launch.process.kill()
        launch.process.wait()
        try:
            for fd in exits:  # a pidfd turns readable when its process has ended
                assert select.select([fd], [], [], 60)[0], "a node outlived its launcher"
        finally:
            for fd in exits:
                os.close(fd)
    stopped_at: dict[str, str] = {}
    for label in order:
        for line in (run.path / "logs" / f"{label}.log").read_text().splitlines():
            record = json.loads(line)
            if record.get("event") == "node.stopping":
                stopped_at[label] = record["timestamp"]
                assert record["reason"] == "launcher gone"
    assert [label for label in order if label in stopped_at] == order
    assert sorted(order, key=stopped_at.__getitem__) == list(reversed(order))
    sealed = [p for e, p in _sealed(run.path) if e == "diag.event"]
    assert any(p["code"] == DiagCode.SUPERVISOR_LOST for p in sealed)
    assert verify_store(run.path / "log.store").ok


@pytest.mark.verifies("SR-SUP-007")
def test_a_hang_up_stops_the_launch_in_order_and_seals_why(short_tmp: Path) -> None:
    """SIGHUP (a closed terminal) stops the launch as Ctrl-C does; the reason is sealed."""
    run = RunDir(short_tmp / "run")
    path = classifier_launch(short_tmp)
    with ExternalLaunch(path, run) as launch:
        assert launch.process is not None
        launch.process.send_signal(signal.SIGHUP)
        assert launch.process.wait(120) == 0
    stops = [
        str(p["detail"])
        for e, p in _sealed(run.path)
        if e == "audit.event" and p["event"] == AuditId.NODE_STOPPED
    ]
    assert "launch stopping in order: SIGHUP" in stops
    assert verify_store(run.path / "log.store").ok


@pytest.mark.verifies("SR-RUN-001")
def test_a_second_launch_on_a_run_directory_is_refused(
    pipeline: tuple[Launcher, LoadDriver],
) -> None:
    """A second launch on the running launch's directory is refused before it binds or
    starts anything; the first serves on."""
    launcher, driver = pipeline
    with pytest.raises(LaunchError, match="in use by another launch"):
        Launcher(load(launcher.plan.source, launcher.run.path), launcher.run)
    since = time.monotonic_ns()
    driver.run_until(lambda: any(o.result for o in driver.ended_since(since)), 10, "serving")
    assert driver.state is SafetyState.NORMAL


@pytest.mark.verifies("SR-STA-001")
def test_a_restarted_loader_keeps_the_version_sequence(
    pipeline: tuple[Launcher, LoadDriver],
) -> None:
    """Swap to version 2, kill the loader: the restarted one resumes generation 2 (not 1),
    is the cause of one degradation only (its death), and the next swap is served."""
    launcher, driver = pipeline
    root = launcher.run.path.parent / "models"
    set_latest(root, "tiny", "2")
    since = time.monotonic_ns()
    driver.run_until(
        lambda: any(o.result and o.result.version == "2" for o in driver.ended_since(since)),
        60,
        "version 2 served",
    )
    pid = child_pid(launcher, "loader")
    killed = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    driver.run_until(lambda: restarted(launcher, "loader", pid), 20, "loader restarted")
    with Subscriber(launcher.ctx, launcher.run.sub, [Topic.HEARTBEAT]) as beats:
        generation = ""
        deadline = time.monotonic() + 60
        while not generation and time.monotonic() < deadline:
            driver.step()
            while (got := beats.recv(0)) is not None:
                body = got.body
                if isinstance(body, Heartbeat) and body.node == "loader":
                    generation = body.detail.get("generation", "")
    assert generation == "2"
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, killed), 30, "recovered")
    # Once for its death; its restart (a first beat, then steady beats) is no second fault.
    by_loader = [c for t, s, c in driver.states if t >= killed and "loader" in c]
    assert len(by_loader) == 1, by_loader
    set_latest(root, "tiny", "1")
    since = time.monotonic_ns()
    driver.run_until(
        lambda: any(o.result and o.result.version == "1" for o in driver.ended_since(since)),
        60,
        "version 1 served again",
    )
    driver.drain()
    assert not driver.lost()


@pytest.mark.verifies("SR-STA-001")
def test_a_fault_after_a_swap_recovers_to_normal(pipeline: tuple[Launcher, LoadDriver]) -> None:
    """Swap to version 2, then kill a worker: the probe judges the recovery by version 2's
    answer, and the system is NORMAL again (never SAFE_STOP)."""
    launcher, driver = pipeline
    set_latest(launcher.run.path.parent / "models", "tiny", "2")
    since = time.monotonic_ns()
    driver.run_until(
        lambda: any(o.result and o.result.version == "2" for o in driver.ended_since(since)),
        60,
        "version 2 served",
    )
    driver.run_for(1.0)  # room for the watchdog to learn version 2's answer while NORMAL
    pid = child_pid(launcher, "worker.1")
    killed = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    driver.run_until(lambda: driver.reached(SafetyState.DEGRADED, killed), 10, "degraded")
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, killed), 30, "recovered")
    assert not driver.reached(SafetyState.SAFE_STOP, killed)
    driver.drain()
    assert not driver.lost()


def _launcher_beat(sub: Subscriber) -> bool:
    while (got := sub.recv(0)) is not None:
        if isinstance(got.body, Heartbeat) and got.body.node == "launcher":
            return True
    return False


@pytest.mark.verifies("SR-SUP-005")
def test_an_exit_is_published_with_its_code_and_restart(
    pipeline: tuple[Launcher, LoadDriver],
) -> None:
    """SIGKILL a node: the launcher publishes its exit (pid, signal, the restart it gets) at
    once, and the watchdog degrades on it."""
    launcher, driver = pipeline
    with Subscriber(launcher.ctx, launcher.run.sub, [Topic.NODE_EXIT, Topic.HEARTBEAT]) as exits:
        # The proxy passes a subscription to every publisher at once: once the launcher's
        # own beat comes through, its exit reports will too.
        driver.run_until(lambda: _launcher_beat(exits), 10, "subscribed")
        pid = child_pid(launcher, "logger")
        killed = time.monotonic_ns()
        os.kill(pid, signal.SIGKILL)
        seen: list[NodeExit] = []

        def published() -> bool:
            while (got := exits.recv(0)) is not None:
                if isinstance(got.body, NodeExit):
                    seen.append(got.body)
            return any(e.node == "logger" for e in seen)

        driver.run_until(published, 10, "exit published")
    exit_ = next(e for e in seen if e.node == "logger")
    assert (exit_.pid, exit_.code, exit_.kind) == (pid, -signal.SIGKILL, "logger")
    assert exit_.restart_in_ms >= 0
    driver.run_until(lambda: driver.reached(SafetyState.DEGRADED, killed), 10, "degraded")
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, killed), 30, "recovered")
    driver.drain()
    assert not driver.lost()
