"""Redundancy and degradation: a lost ingest or worker costs no request and only its share."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.errors import Unavailable
from vigil.launch import Launcher, load
from vigil.schemas import DiagCode, InferResult, SafetyState
from vigil.testing.pipeline import (
    FRAME,
    LoadDriver,
    child_pid,
    classifier_launch,
    ingest_endpoints,
    restarted,
)

pytestmark = pytest.mark.verifies("SR-ERR-001")


@pytest.mark.verifies("SR-RED-001", "SR-SUP-004")
def test_a_stopped_ingest_is_failed_over_and_replaced(
    pipeline: tuple[Launcher, LoadDriver],
) -> None:
    """SIGSTOP the ingest in use (a hang): the client gives up on it by its silence and
    re-sends to the standby at once; the launcher kills and restarts the hung one; nothing
    is lost."""
    launcher, driver = pipeline
    serving = driver.client.failover.choose()
    label = ["ingest", "ingest-b"][serving or 0]
    pid = child_pid(launcher, label)
    stopped = time.monotonic_ns()
    os.kill(pid, signal.SIGSTOP)
    try:
        driver.run_until(
            lambda: any(t >= stopped for t, _ in driver.client.failover.losses), 10, "failover"
        )
        driver.run_until(lambda: restarted(launcher, label, pid), 20, "hung ingest replaced")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    served = time.monotonic_ns()
    driver.run_until(lambda: any(o.result for o in driver.ended_since(served)), 10, "serving")
    driver.drain()
    assert not driver.lost()


@pytest.mark.verifies("SR-RED-002")
def test_a_repeat_is_answered_without_running_again(short_tmp: Path) -> None:
    """The same request (same id) sent again, to the same ingest or to the standby, gets
    the very result the first run produced: the batch that made it, not a new one (one
    worker, so the standby's copy reaches the worker that ran it)."""
    run = RunDir(short_tmp / "run")
    path = classifier_launch(short_tmp, workers=1, ingests=2)
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        first, standby = ingest_endpoints(launcher)
        with Client([first], name="repeat", ctx=launcher.ctx) as client:
            seq = client.submit(FRAME, stream_id="repeat", frame_ts_us=1, deadline_s=20)
            sent = client.failover.requests[seq]
            reply = client.poll(20_000)
            assert reply is not None and isinstance(reply[1], InferResult), reply
            original = reply[1]
            frames = [client.channel.encode(sent.envelope), *sent.parts]
            for endpoint in (first, standby):
                with launcher.ctx.socket(zmq.DEALER) as raw:
                    raw.setsockopt(zmq.LINGER, 0)
                    raw.connect(endpoint)
                    raw.send_multipart(frames)
                    assert raw.poll(20_000), f"no answer to the repeat from {endpoint}"
                    again = client.channel.decode(raw.recv_multipart(copy=False)).body
                assert isinstance(again, InferResult), again
                assert (again.worker, again.batch_id) == (original.worker, original.batch_id)


@pytest.mark.verifies("SR-RED-001", "SR-RED-002")
def test_a_shared_memory_request_is_failed_over_and_its_slot_returned_once(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest in use is killed while it holds a request whose frame lies in the client's
    shared memory: the client re-sends the same descriptor to the standby and gets the
    result; the slot is given back exactly once; a repeat of the request is answered from the
    standby's recent answers even after the slot was rewritten (never read again)."""
    run = RunDir(short_tmp / "run")
    path = classifier_launch(short_tmp, workers=1, ingests=2)
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        endpoints = ingest_endpoints(launcher)
        with Client(endpoints, name="shm-failover", ctx=launcher.ctx, pool_slots=2) as client:
            client.infer(FRAME, stream_id="shm", frame_ts_us=1, deadline_s=20)
            pool = client.slots.pool
            assert pool is not None  # the frames go through shared memory
            until = time.monotonic() + 20
            while not all(client.links_up):
                assert time.monotonic() < until, "the client never reached both ingests"
                client.poll(50)
            returned: list[int] = []
            release = pool.release

            def counted(slot: int) -> None:
                returned.append(slot)
                release(slot)

            monkeypatch.setattr(pool, "release", counted)
            held = client.failover.choose()
            assert held is not None
            pid = child_pid(launcher, ["ingest", "ingest-b"][held])
            # Stopped, the ingest holds what it is sent; the client has not polled, so it
            # still sends there.
            os.kill(pid, signal.SIGSTOP)
            try:
                seq = client.submit(FRAME, stream_id="shm", frame_ts_us=2, deadline_s=20)
                sent = client.failover.requests[seq]
                assert sent.slot is not None and sent.link == held
            finally:
                os.kill(pid, signal.SIGKILL)
            reply = client.poll(20_000)
            assert reply is not None and reply[0] == seq, reply
            result = reply[1]
            assert isinstance(result, InferResult), result
            assert sent.sends == 2 and sent.link is not None and sent.link != held
            assert returned == [sent.slot] and pool.free == 2
            # The slot is rewritten (a later frame); the repeat must not look at it.
            pool.put(sent.slot, np.zeros_like(FRAME).data)
            frames = [client.channel.encode(sent.envelope), *sent.parts]
            with launcher.ctx.socket(zmq.DEALER) as raw:
                raw.setsockopt(zmq.LINGER, 0)
                raw.connect(endpoints[sent.link])
                raw.send_multipart(frames)
                assert raw.poll(20_000), "no answer to the repeat"
                again = client.channel.decode(raw.recv_multipart(copy=False)).body
            assert isinstance(again, InferResult), again
            assert (again.worker, again.batch_id) == (result.worker, result.batch_id)
        assert returned == [sent.slot]


# Another process: sends the frames (hex on stdin) to an ingest, writes the reply's frames.
_REPLAY = """
import sys, zmq
sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(sys.argv[1])
sock.send_multipart([bytes.fromhex(h) for h in sys.stdin.read().split()])
assert sock.poll(20_000), "no answer"
print(" ".join(frame.hex() for frame in sock.recv_multipart()))
"""


@pytest.mark.verifies("SR-RED-002", "SR-SEC-003")
def test_another_peers_copy_of_a_request_id_is_its_own_request(short_tmp: Path) -> None:
    """A request id is the sending peer's: the same id and frames sent from another process
    are run as that peer's own request, never answered with the first peer's result."""
    run = RunDir(short_tmp / "run")
    path = classifier_launch(short_tmp, workers=1, ingests=1)
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        (endpoint,) = ingest_endpoints(launcher)
        with Client([endpoint], name="owner", ctx=launcher.ctx) as client:
            seq = client.submit(FRAME, stream_id="owned", frame_ts_us=1, deadline_s=20)
            sent = client.failover.requests[seq]
            reply = client.poll(20_000)
            assert reply is not None and isinstance(reply[1], InferResult), reply
            original = reply[1]
            frames = [client.channel.encode(sent.envelope), *sent.parts]
            copied = subprocess.run(
                [sys.executable, "-c", _REPLAY, endpoint],
                input=" ".join(bytes(frame).hex() for frame in frames),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            answer = [zmq.Frame(bytes.fromhex(h)) for h in copied.stdout.split()]
            again = client.channel.decode(answer).body
        assert isinstance(again, InferResult), again
        assert again.batch_id != original.batch_id


@pytest.mark.verifies("SR-DEG-001")
def test_a_lost_worker_costs_only_its_share(pipeline: tuple[Launcher, LoadDriver]) -> None:
    """Kill one worker of two: while the state is DEGRADED the other one serves, and no
    request is refused while it has room for it."""
    launcher, driver = pipeline
    pid = child_pid(launcher, "worker.1")
    killed = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    driver.run_until(lambda: driver.reached(SafetyState.DEGRADED, killed), 10, "degraded")
    degraded = next(t for t, s, _ in driver.states if t >= killed and s is SafetyState.DEGRADED)
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, degraded), 30, "recovered")
    during = [o for o in driver.ended_since(degraded) if o.done_ns < driver.states[-1][0]]
    assert any(o.result is not None and o.result.worker == "worker.2" for o in during)
    assert not [o for o in during if isinstance(o.error, Unavailable)]
    driver.drain()
    assert not driver.lost()


_SYS_PIDFD_GETFD = 438  # the same number on every architecture (the unified syscall table)


def _hold_sockets(pid: int) -> list[int]:
    """Copies of every socket of process `pid` (pidfd_getfd): its connections outlive it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    held: list[int] = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                code = ctypes.get_errno()
                for copy in held:
                    os.close(copy)
                if code in (errno.ENOSYS, errno.EPERM):
                    pytest.skip(f"pidfd_getfd unavailable here: {os.strerror(code)}")
                raise OSError(code, os.strerror(code))
            held.append(fd)
    finally:
        os.close(pidfd)
    return held


@pytest.mark.verifies("SR-DLN-002", "SR-DEG-001")
def test_a_worker_gone_before_its_connections_gets_no_more_work(
    pipeline: tuple[Launcher, LoadDriver],
) -> None:
    """A killed worker's connections can outlive its process (its sockets close late in the
    exit, or another process holds them): the ingest learns of the exit from the process
    itself, says the worker exited rather than fell silent, and the survivor serves on."""
    launcher, driver = pipeline
    driver.in_flight = 24  # more than both workers take: each always holds work
    busy = time.monotonic_ns()
    driver.run_until(
        lambda: (
            {"worker.1", "worker.2"}
            <= {o.result.worker for o in driver.ended_since(busy) if o.result is not None}
        ),
        20,
        "both workers serving",
    )
    pid = child_pid(launcher, "worker.1")
    held = _hold_sockets(pid)
    try:
        killed = time.monotonic_ns()
        os.kill(pid, signal.SIGKILL)

        def lost() -> list[str]:
            return [
                d.message
                for t, d in driver.diags
                if t >= killed and d.code is DiagCode.WORKER_LOST and "worker.1" in d.message
            ]

        driver.run_until(lambda: bool(lost()), 20, "the ingest losing worker.1")
        assert "exited" in lost()[0], lost()
        seen = time.monotonic_ns()
        driver.run_until(
            lambda: any(
                o.result is not None and o.result.worker == "worker.2"
                for o in driver.ended_since(seen)
            ),
            20,
            "the surviving worker serving",
        )
    finally:
        for fd in held:
            os.close(fd)
    driver.drain()
    assert not driver.lost()


@pytest.mark.verifies("SR-DEG-001")
def test_a_fault_off_the_request_path_refuses_nothing(
    pipeline: tuple[Launcher, LoadDriver],
) -> None:
    """A hung loader degrades the state (results are flagged) but refuses no request."""
    launcher, driver = pipeline
    pid = child_pid(launcher, "loader")
    stopped = time.monotonic_ns()
    os.kill(pid, signal.SIGSTOP)
    try:
        driver.run_until(lambda: driver.reached(SafetyState.DEGRADED, stopped), 10, "degraded")
        flagged = time.monotonic_ns()
        driver.run_until(
            lambda: any(o.result and o.result.degraded for o in driver.ended_since(flagged)),
            10,
            "a result flagged degraded",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed as hung meanwhile
            os.kill(pid, signal.SIGCONT)
    driver.run_until(lambda: driver.reached(SafetyState.NORMAL, stopped), 30, "recovered")
    assert not [o for o in driver.ended_since(stopped) if isinstance(o.error, Unavailable)]
    driver.drain()
    assert not driver.lost()
