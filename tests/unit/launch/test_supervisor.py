"""The launcher's signals: SIGCHLD only wakes it to reap; SIGTERM/SIGINT stop supervision."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, LaunchPlan
from vigil.launch.model import LaunchFile, NodeSpec

pytestmark = pytest.mark.verifies("SR-SUP-003")


def _plan() -> LaunchPlan:
    """A plan that starts nothing: the launcher's own signal handling is under test."""
    launch = LaunchFile(name="empty", nodes=[NodeSpec(name="sink", kind="demo_sink")])
    return LaunchPlan(source="test", launch=launch, processes=[])


def test_sigchld_does_not_stop_the_launcher(short_tmp: Path) -> None:
    """A child's exit is no reason to stop: `stopping` stays False, no reason is given."""
    run = RunDir(short_tmp / "run")
    with Launcher(_plan(), run) as launcher:
        os.kill(os.getpid(), signal.SIGCHLD)
        launcher.supervise(duration_s=0)
        assert (launcher.stopping, launcher.stop_reason) == (False, "duration elapsed")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_supervision(short_tmp: Path, sig: signal.Signals) -> None:
    """SIGTERM or SIGINT ends `supervise` with a clean exit and is named as the reason;
    leaving the launcher puts the previous handler back."""
    run = RunDir(short_tmp / "run")
    before = signal.getsignal(sig)
    with Launcher(_plan(), run) as launcher:
        os.kill(os.getpid(), signal.SIGCHLD)
        os.kill(os.getpid(), sig)
        assert launcher.supervise() == 0
        assert (launcher.stopping, launcher.stop_reason) == (True, sig.name)
    assert signal.getsignal(sig) is before
