"""Supervision: limits that kill a node, unprivileged users, SAFE_STOP and a killed proxy."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq
from structlog.testing import capture_logs

from vigil.bus.pubsub import Publisher, Subscriber
from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.launch import Launcher, LaunchError, RestartPolicy, load
from vigil.launch.model import Limits, NodeSpec
from vigil.nodes.demo_sink import SinkConfig
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig, read_entries
from vigil.nodes.worker import FAULT_HANG_STREAM, WorkerConfig
from vigil.schemas import AuditId, Heartbeat, LogRecord, SafetyState, StateChange, Topic
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import signed_pair
from vigil.testing.pipeline import (
    FAST_INGEST,
    child_pid,
    classifier_serving,
    restarted,
    told_fresh_bus,
)

pytestmark = pytest.mark.verifies("SR-SUP-001")

_LOGGER = node("logger", LoggerConfig(store=StoreConfig(path="log.store")))
_QUICK = RestartPolicy(max_restarts=1, backoff_initial_ms=20, backoff_max_ms=50)
_TEST_USER = "vigiltest"


@contextmanager
def _launch(tmp: Path, nodes: list[NodeSpec]) -> Iterator[Launcher]:
    path = write(launch_file("supervised", *nodes), tmp)
    run = RunDir(tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        yield launcher


def _sealed(run: Path) -> list[tuple[str, dict[str, object]]]:
    return [(e.event, msgspec.msgpack.decode(e.payload)) for e in read_entries(run / "log.store")]


def _audits(run: Path, event: AuditId) -> list[str]:
    return [str(p["detail"]) for e, p in _sealed(run) if e == "audit.event" and p["event"] == event]


def _wait_sealed(launcher: Launcher, event: AuditId, word: str) -> None:
    deadline = time.monotonic() + 20
    while not any(word in d for d in _audits(launcher.run.path, event)):
        assert time.monotonic() < deadline, f"no sealed {event.name} naming {word}"
        launcher.supervise(0.1)


def _child(launcher: Launcher, label: str) -> object:
    return next(c for c in launcher.children if c.plan.label == label)


def test_node_over_its_address_space_limit_is_restarted_and_logged(short_tmp: Path) -> None:
    """A worker that cannot fit its address-space limit is restarted, then given up on;
    both decisions are sealed as audit events while the rest of the launch runs on."""
    hog = node(
        "hog",
        WorkerConfig(),
        limits=Limits(address_space_mb=120, core_dumps=False),
        restart=_QUICK,
    )
    with _launch(short_tmp, [_LOGGER, hog]) as launcher:
        assert _child(launcher, "hog").failed  # type: ignore[attr-defined]
        assert launcher.failure is None
        _wait_sealed(launcher, AuditId.NODE_RESTARTED, "hog")
        _wait_sealed(launcher, AuditId.NODE_FAILED, "hog")


def _interpreter_runs_as(uid: int, gid: int) -> bool:
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import vigil"],
            user=uid,
            group=gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            check=False,
        )
    except PermissionError:
        return False
    return probe.returncode == 0


@pytest.fixture
def test_user() -> pwd.struct_passwd:
    """An unprivileged system account for the node (created when missing; root only)."""
    if os.geteuid() != 0:
        pytest.skip("creating and switching to a user needs root")
    try:
        entry = pwd.getpwnam(_TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _TEST_USER], check=True)
        entry = pwd.getpwnam(_TEST_USER)
    if not _interpreter_runs_as(entry.pw_uid, entry.pw_gid):
        pytest.skip(f"{sys.executable} or vigil is not readable by {_TEST_USER} on this host")
    return entry


def test_node_runs_as_its_user_with_limits_and_no_new_privs(
    short_tmp: Path, test_user: pwd.struct_passwd
) -> None:
    """A node with user:, limits, cpu_affinity and nice runs with exactly those, and with
    no_new_privs set; it reaches the bus through the shared run directory."""
    short_tmp.chmod(0o711)  # the run directory's parent must be traversable
    sink = node(
        "sink",
        SinkConfig(),
        user=_TEST_USER,
        limits=Limits(open_files=256, core_dumps=False),
        cpu_affinity=[0],
        nice=5,
    )
    with _launch(short_tmp, [_LOGGER, sink]) as launcher:
        pid = _child(launcher, "sink").pid  # type: ignore[attr-defined]
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        assert status["Uid"].split()[:2] == [str(test_user.pw_uid)] * 2
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Cpus_allowed_list"].strip() == "0"
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert any(
            line.startswith("Max open files") and " 256 " in line for line in limits.splitlines()
        )
        assert any(
            line.startswith("Max core file size") and " 0 " in line for line in limits.splitlines()
        )
        assert os.getpriority(os.PRIO_PROCESS, pid) == 5
        logger_pid = _child(launcher, "logger").pid  # type: ignore[attr-defined]
        assert Path(f"/proc/{logger_pid}/status").read_text().count("NoNewPrivs:\t1") == 1


def test_root_is_refused_without_allow_root(short_tmp: Path) -> None:
    """A node started as root by a launch file without allow_root exits at once (CONFIG),
    is not restarted, and the launch fails naming it."""
    if os.geteuid() != 0:
        pytest.skip("runs as root only")
    rooted = launch_file("rooted", _LOGGER, heartbeat_ms=200, allow_root=False)
    path = write(rooted, short_tmp)
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher, pytest.raises(LaunchError) as caught:
        launcher.start()
    assert "proxy" in str(caught.value)
    log = (run.path / "logs" / "proxy.log").read_text()
    assert "node.refused_root" in log
    assert not _child(launcher, "proxy").restarts  # type: ignore[attr-defined]


def test_required_node_failure_brings_safe_stop(short_tmp: Path) -> None:
    """When a required node fails for good the launcher publishes SAFE_STOP (latched) with
    the cause, seals it, stops every node and reports failure."""
    sink = node("sink", SinkConfig(), required=True, restart=RestartPolicy(max_restarts=0))
    with _launch(short_tmp, [_LOGGER, sink]) as launcher:
        os.kill(_child(launcher, "sink").pid, signal.SIGKILL)  # type: ignore[attr-defined]
        assert launcher.supervise(20) == 1
        assert launcher.failure is not None and "sink" in launcher.failure
        with zmq.Context() as ctx, Subscriber(ctx, launcher.run.sub, [Topic.SAFETY_STATE]) as sub:
            latched = sub.recv(5000)
        assert latched is not None and isinstance(latched.body, StateChange)
        assert latched.body.state is SafetyState.SAFE_STOP
        assert "sink" in latched.body.cause
    sealed = _sealed(short_tmp / "run")
    states = [p for e, p in sealed if e == "health.state"]
    assert any(p["state"] == "SAFE_STOP" and "sink" in str(p["cause"]) for p in states)
    assert any("SAFE_STOP" in d for d in _audits(short_tmp / "run", AuditId.STATE_TRANSITION))


def test_killed_proxy_is_restarted_and_heartbeats_flow_again(short_tmp: Path) -> None:
    """SIGKILL the proxy: the launcher restarts it, nodes reconnect by themselves (their
    heartbeats come through the new proxy) and the restart is sealed in the log."""
    sink = node("sink", SinkConfig())
    with _launch(short_tmp, [_LOGGER, sink]) as launcher:
        proxy = _child(launcher, "proxy")
        old_pid = proxy.pid  # type: ignore[attr-defined]
        with zmq.Context() as ctx, Subscriber(ctx, launcher.run.sub, [Topic.HEARTBEAT]) as sub:
            killed_ns = time.time_ns()
            os.kill(old_pid, signal.SIGKILL)
            fresh: set[str] = set()
            deadline = time.monotonic() + 20
            while not {"logger", "sink"} <= fresh:
                assert time.monotonic() < deadline, f"heartbeats after the restart: {fresh}"
                launcher.supervise(0.05)
                restarted = proxy.pid != old_pid and proxy.ready  # type: ignore[attr-defined]
                while (got := sub.recv(0)) is not None:
                    # Counted only once the new proxy is up: it carried them.
                    if (
                        restarted
                        and isinstance(got.body, Heartbeat)
                        and got.envelope.stamp_ns > killed_ns
                    ):
                        fresh.add(got.body.node)
        assert proxy.pid != old_pid and proxy.ready  # type: ignore[attr-defined]
        _wait_sealed(launcher, AuditId.NODE_RESTARTED, "proxy")


def _ladder(logs: list[dict[str, object]], label: str) -> list[str]:
    """The stop steps the launcher logged for one node, in order."""
    steps = []
    for entry in logs:
        if entry.get("node") != label:
            continue
        if entry["event"] == "node.signalled":
            steps.append(str(entry["signal"]))
        elif entry["event"] == "node.killed":
            steps.append("SIGKILL")
    return steps


@pytest.mark.verifies("SR-SUP-002")
def test_stop_ladder_kills_a_hung_worker_and_stops_a_healthy_node_at_sigint(
    short_tmp: Path,
) -> None:
    """Stopping a worker hung inside its engine (deaf to SIGINT and SIGTERM) goes SIGINT,
    then SIGTERM after its grace, then SIGKILL; a healthy node stops at SIGINT with code 0."""
    root, trusted, _ = signed_pair(short_tmp)
    logger, loader, workers = classifier_serving(root, trusted, workers=1, fault_injection=True)
    workers = msgspec.structs.replace(workers, stop_grace_ms=100, kill_grace_ms=100)
    path = write(
        launch_file("ladder", logger, loader, workers, node("ingest", FAST_INGEST)), short_tmp
    )
    run = RunDir(short_tmp / "run")
    frame = np.full((32, 32, 3), 90, dtype=np.uint8)
    with capture_logs() as logs, Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        with (
            Client(run.ipc("ingest"), name="hang", ctx=launcher.ctx) as client,
            Subscriber(launcher.ctx, run.sub, [Topic.LOG]) as sub,
        ):
            client.submit(frame, stream_id=FAULT_HANG_STREAM, frame_ts_us=1, deadline_s=30)
            deadline = time.monotonic() + 30
            hung = False
            while not hung:
                assert time.monotonic() < deadline, "the worker never took the hanging batch"
                got = sub.recv(100)
                hung = isinstance(got and got.body, LogRecord) and (
                    got.body.event == "worker.fault_injected"  # type: ignore[union-attr]
                )
        worker = _child(launcher, "worker")
        launcher.stop(worker)  # type: ignore[arg-type]
        assert worker.popen.returncode == -signal.SIGKILL  # type: ignore[attr-defined]
        ingest = _child(launcher, "ingest")
        launcher.stop(ingest)  # type: ignore[arg-type]
        assert ingest.popen.returncode == 0  # type: ignore[attr-defined]
    assert _ladder(logs, "worker") == ["SIGINT", "SIGTERM", "SIGKILL"]
    assert _ladder(logs, "ingest") == ["SIGINT"]


@pytest.mark.verifies("SR-STA-001")
def test_only_the_first_process_of_a_kind_on_an_empty_bus_is_told_it_is_fresh(
    short_tmp: Path,
) -> None:
    """A node that waits at start-up for a latched value (the loader for the model) may skip
    the wait only where none can exist: the first process of its kind on a bus its launch
    started empty. A second replica, a restarted process and every process of a launch whose
    run directory kept latched values are told otherwise."""
    nodes = [_LOGGER, node("sink", SinkConfig(), replicas=2)]
    with _launch(short_tmp, nodes) as launcher:
        assert [told_fresh_bus(launcher, n) for n in ("logger", "sink.1", "sink.2")] == [
            True,
            True,
            False,
        ]
        old_pid = child_pid(launcher, "sink.1")
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not restarted(launcher, "sink.1", old_pid):
            assert time.monotonic() < deadline, "sink not restarted"
            launcher.supervise(0.05)
        assert not told_fresh_bus(launcher, "sink.1")
        # A latched value on the bus: the proxy keeps it in the run directory.
        state = StateChange(
            state=SafetyState.NORMAL, previous=SafetyState.NORMAL, cause="test", since_ns=1
        )
        with zmq.Context() as ctx, Publisher(ctx, launcher.run.pub, source="test") as pub:
            while not any(launcher.run.latched.iterdir()):
                assert time.monotonic() < deadline, "latched value not kept"
                pub.publish(Topic.SAFETY_STATE, state)
                launcher.supervise(0.05)
    with _launch(short_tmp, nodes) as again:
        assert not any(told_fresh_bus(again, n) for n in ("logger", "sink.1", "sink.2"))
