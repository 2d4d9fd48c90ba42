"""The fault-injection suite runs against the real launched pipeline under load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.schemas import SafetyState
from vigil.testing.pipeline import LoadDriver, classifier_launch


@pytest.fixture
def pipeline(short_tmp: Path) -> Iterator[tuple[Launcher, LoadDriver]]:
    """A launched classifier pipeline with a watchdog, under closed-loop load, in NORMAL."""
    path = classifier_launch(short_tmp, ingests=2)
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        with LoadDriver(launcher) as driver:
            driver.run_until(
                lambda: driver.state is SafetyState.NORMAL and len(driver.outcomes) > 20,
                30,
                "steady state",
            )
            yield launcher, driver
