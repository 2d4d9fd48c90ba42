"""WorkerExits: the exit of a watched process wakes the poller and is named once."""

from __future__ import annotations

import subprocess
import sys

import zmq

from vigil.nodes.ingest._exits import WorkerExits


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_a_killed_process_is_named_once() -> None:
    """A watched process that is killed wakes the poll and is named once, then forgotten."""
    poller = zmq.Poller()
    process = _sleeper()
    with WorkerExits(poller) as exits:
        exits.watch(process.pid)
        exits.watch(process.pid)  # watched once
        assert exits.handle(dict(poller.poll(0))) == []
        process.kill()
        process.wait()
        assert exits.handle(dict(poller.poll(10_000))) == [process.pid]
        assert exits.handle(dict(poller.poll(0))) == []


def test_a_process_gone_before_it_is_watched_is_named_at_the_next_poll() -> None:
    """Watching a pid that no longer exists names it as exited at the next handle."""
    process = _sleeper()
    process.kill()
    process.wait()
    with WorkerExits(zmq.Poller()) as exits:
        exits.watch(process.pid)
        assert exits.handle({}) == [process.pid]
        assert exits.handle({}) == []
