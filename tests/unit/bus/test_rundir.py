"""The run directory: private by mode, ipc endpoints inside it, an atomic graph file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.bus.rundir import GraphNode, RunDir, RunDirInUse, RunGraph

pytestmark = pytest.mark.verifies("SR-SEC-002")


def test_run_directory_is_private_to_its_owner(short_tmp: Path) -> None:
    """A new run directory has mode 0700, even under a permissive umask."""
    run = RunDir(short_tmp / "a" / "run")
    assert stat.S_IMODE(run.path.stat().st_mode) == 0o700


def test_endpoints_live_inside_the_run_directory(short_tmp: Path) -> None:
    """Every ipc endpoint is a socket file in the run directory."""
    run = RunDir(short_tmp / "run")
    for endpoint in (run.pub, run.sub, run.control, run.ipc("ingest")):
        assert endpoint.startswith(f"ipc://{run.path}/")


def test_too_long_socket_paths_are_refused(short_tmp: Path) -> None:
    """A socket path beyond the unix limit is an error, not a silently truncated name."""
    run = RunDir(short_tmp / ("x" * 90))
    with pytest.raises(ValueError, match="too long"):
        run.ipc("ingest")


def test_graph_round_trips(short_tmp: Path) -> None:
    """graph.json written by the launcher reads back as written."""
    run = RunDir(short_tmp / "run")
    graph = RunGraph(
        launch_file="demo.yaml",
        launcher_pid=1,
        started_ns=2,
        endpoints={"pub": run.pub},
        topics={"infer/result": "infer.result"},
        nodes=[GraphNode(name="ingest", kind="ingest", instance=0, pid=3)],
    )
    run.write_graph(graph)
    assert run.read_graph() == graph
    assert stat.S_IMODE(run.graph_path.stat().st_mode) == 0o600


@pytest.mark.verifies("SR-RUN-001")
def test_a_second_lock_on_a_run_directory_is_refused(short_tmp: Path) -> None:
    """While one launch holds a run directory, a second lock names the holder and fails."""
    run = RunDir(short_tmp / "run")
    with run.lock():
        with pytest.raises(RunDirInUse) as refused:
            run.lock()
        assert f"pid {os.getpid()}" in str(refused.value)


@pytest.mark.verifies("SR-RUN-001")
def test_the_lock_is_released_when_its_holder_dies(short_tmp: Path) -> None:
    """A launcher that is killed leaves its run directory free: the kernel drops the lock."""
    run = RunDir(short_tmp / "run")
    code = (
        "import sys; from vigil.bus.rundir import RunDir;"
        f" lock = RunDir({str(run.path)!r}).lock(); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirInUse):
            run.lock()
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.stdout.close()
    run.lock().close()
