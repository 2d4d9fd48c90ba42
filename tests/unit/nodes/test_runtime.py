"""A node's stop signals: SIGTERM/SIGINT end its wait at once and say why it stops."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from vigil.bus.rundir import RunDir
from vigil.nodes._runtime import Node
from vigil.nodes.contract import NodeArgs

pytestmark = pytest.mark.verifies("SR-SUP-003")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_poll_and_stops_the_node(
    short_tmp: Path, sig: signal.Signals
) -> None:
    """The signal wakes `poll` (no socket event is reported), sets `stopping` and names it."""
    run = RunDir(short_tmp / "run")
    args = NodeArgs(name="n", kind="test", run_dir=str(run.path), heartbeat_ms=50)
    before = signal.getsignal(sig)
    with Node(args) as node:
        assert (node.stopping, node.stop_reason) == (False, "")
        os.kill(os.getpid(), sig)
        assert node.poll(10_000) == {}  # the wake-up is taken out; the loop sees no event
        assert (node.stopping, node.stop_reason) == (True, sig.name)
    assert signal.getsignal(sig) is before
