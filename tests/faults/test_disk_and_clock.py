"""A wall-clock step and a full disk: neither loses a request nor stops the pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vigil.bus import clock
from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.schemas import SafetyState
from vigil.testing.pipeline import LoadDriver, classifier_launch

pytestmark = pytest.mark.verifies("SR-ERR-001")


@pytest.fixture
def stepped_clock(short_tmp: Path) -> Iterator[Path]:
    """An offset file that this process and the launched nodes read wall time through."""
    offset = short_tmp / "clock.offset"
    clock.use_offset_file(offset)
    try:
        yield offset
    finally:
        clock.use_offset_file(None)


@pytest.mark.verifies("SR-TIM-002")
def test_wall_clock_steps_move_no_deadline_and_no_state(
    short_tmp: Path, stepped_clock: Path
) -> None:
    """Step every process's wall clock a second forward, then back: requests are still
    served, none fails for it, and the state never leaves NORMAL."""
    run = RunDir(short_tmp / "run")
    path = classifier_launch(short_tmp, ingests=2)
    with Launcher(load(path, run.path), run, clock_offset_file=stepped_clock) as launcher:
        launcher.start()
        with LoadDriver(launcher) as driver:
            driver.run_until(
                lambda: driver.state is SafetyState.NORMAL and len(driver.outcomes) > 20,
                30,
                "steady state",
            )
            stepped = time.monotonic_ns()
            for delta in (1, -1, -1, 1):
                clock.step(stepped_clock, delta * 1_000_000_000)
                _served_since(driver, time.monotonic_ns())
            driver.drain()
            after = driver.ended_since(stepped)
            assert after and all(o.result is not None for o in after), [
                o.error for o in after if o.error
            ][:5]
            # A state said again (the bus back after a host stall) is no transition.
            left = [
                (s, c) for t, s, c in driver.states if t >= stepped and s is not SafetyState.NORMAL
            ]
            assert left == []


def _served_since(driver: LoadDriver, since: int) -> None:
    """Drive until twenty requests sent from `since` on have their results."""
    driver.run_until(
        lambda: sum(o.result is not None for o in driver.ended_since(since)) > 20,
        30,
        "served after the step",
    )


_DISK_SCENARIO = """
import json, os, signal, sys, time
from pathlib import Path
from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.nodes.logger.store import verify_store
from vigil.schemas import DiagCode, SafetyState
from vigil.testing.pipeline import LoadDriver, child_pid, classifier_launch, restarted

folder, disk = Path(sys.argv[1]), Path(sys.argv[2])
run = RunDir(disk / "run")
path = classifier_launch(folder, ingests=2)
report = {}
with Launcher(load(path, run.path), run) as launcher:
    launcher.start()
    with LoadDriver(launcher) as driver:
        driver.run_until(lambda: driver.state is SafetyState.NORMAL and len(driver.outcomes) > 20,
                         60, "steady")
        filler = run.path / "filler"
        with open(filler, "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\\0" * 65536)
            except OSError:
                pass
        full = time.monotonic_ns()
        pid = child_pid(launcher, "worker.1")
        os.kill(pid, signal.SIGKILL)
        driver.run_until(lambda: restarted(launcher, "worker.1", pid), 30, "restart on a full disk")
        driver.run_until(lambda: any(e.code is DiagCode.DISK_FULL for t, e in driver.diags
                                     if t >= full), 30, "DISK_FULL said")
        served = time.monotonic_ns()
        driver.run_until(lambda: any(o.result for o in driver.ended_since(served)), 30,
                         "served on a full disk")
        filler.unlink()
        freed = time.monotonic_ns()
        driver.run_until(lambda: driver.reached(SafetyState.NORMAL, full), 60, "normal again")
        driver.drain()
        report = {
            "lost": sum(o.lost for o in driver.outcomes),
            "disk_full_said": sorted({e.node for t, e in driver.diags
                                      if t >= full and e.code is DiagCode.DISK_FULL}),
            "state": str(driver.state),
        }
    report["log_ok"] = verify_store(run.path / "log.store").ok
print(json.dumps(report))
"""


def _in_namespace(script: str, tmp: Path, size: str) -> subprocess.CompletedProcess[str]:
    """Run `sh -c script` with a `size` tmpfs mounted at TMP/disk, in a private mount
    namespace (a user namespace too, so no privilege is needed where they are enabled)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed")
    disk = tmp / "disk"
    disk.mkdir()
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here: {probe.stderr.decode().strip()}")
    mount = f"mount -t tmpfs -o size={size},mode=0700 vigil-disk {disk}"
    return subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", f"{mount} && {script}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
    )


@pytest.mark.verifies("SR-DSK-001")
def test_a_full_disk_costs_writes_not_the_pipeline(short_tmp: Path) -> None:
    """Fill the run directory's disk and kill a worker (its restart writes logs, the graph,
    the saved state): the writers say DISK_FULL and serve on; with space back, NORMAL."""
    done = _in_namespace(
        f"exec {sys.executable} -c '{_DISK_SCENARIO}' {short_tmp} {short_tmp / 'disk'}",
        short_tmp,
        "96m",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["lost"] == 0
    assert report["disk_full_said"], report
    assert report["state"] == "NORMAL"
    assert report["log_ok"]


@pytest.mark.verifies("SR-DSK-001")
def test_starting_on_a_full_disk_is_a_one_line_error(short_tmp: Path) -> None:
    """`vigil launch` on a full disk ends at once with one line saying so, no traceback."""
    path = classifier_launch(short_tmp)
    disk = short_tmp / "disk"
    fill = f"head -c 4194304 /dev/zero > {disk}/filler 2>/dev/null"
    launch = (
        f"{sys.executable} -c 'from vigil.tools.cli import main; main()'"
        f" launch {path} --run-dir {disk}/run"
    )
    done = _in_namespace(f"{fill}; exec {launch}", short_tmp, "1m")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
