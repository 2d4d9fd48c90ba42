"""Two hosts, one launch file: the bus and the ingest on host A, the workers on host B.

Host B is a network namespace joined to this one by a veth pair (10.77.0.1 here, 10.77.0.2
there), both made by the test; where namespaces cannot be made, two loopback addresses
stand in for the two hosts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq.auth

from tests.integration.conftest import DETECTOR
from vigil.bus.curve import CurveConfig
from vigil.bus.rundir import RunDir, RunGraph
from vigil.client import Client
from vigil.errors import DeadlineExceeded, Unavailable
from vigil.launch import Launcher, load
from vigil.launch.model import BusSpec, SecuritySpec
from vigil.nodes._scene import render_scene
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.loader import LoaderConfig
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig
from vigil.nodes.worker import EngineConfig, WorkerConfig
from vigil.schemas import InferResult
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.pipeline import told_fresh_bus


@dataclass(frozen=True)
class Hosts:
    a: str
    b: str
    wrap_b: list[str]  # the command prefix that runs a process on host B


def _ip(*args: str) -> bool:
    return subprocess.run(["ip", *args], capture_output=True, check=False).returncode == 0


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Host A in this namespace and host B in a new one, or two loopback addresses."""
    if os.geteuid() == 0 and shutil.which("ip"):
        ns, veth = f"vgmh{os.getpid()}", f"vgmh{os.getpid() % 100000}"
        with ExitStack() as undo:
            if _ip("netns", "add", ns):
                undo.callback(_ip, "netns", "del", ns)
                ok = _ip("link", "add", f"{veth}a", "type", "veth", "peer", "name", f"{veth}b")
                if ok:
                    undo.callback(_ip, "link", "del", f"{veth}a")
                ok = (
                    ok
                    and _ip("link", "set", f"{veth}b", "netns", ns)
                    and _ip("addr", "add", "10.77.0.1/30", "dev", f"{veth}a")
                    and _ip("link", "set", f"{veth}a", "up")
                    and _ip(
                        "netns", "exec", ns, "ip", "addr", "add", "10.77.0.2/30", "dev", f"{veth}b"
                    )
                    and _ip("netns", "exec", ns, "ip", "link", "set", f"{veth}b", "up")
                    and _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
                )
                if ok:
                    yield Hosts(a="10.77.0.1", b="10.77.0.2", wrap_b=["ip", "netns", "exec", ns])
                    return
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            pytest.skip("neither network namespaces nor a second loopback address here")
    yield Hosts(a="127.0.0.1", b="127.0.0.2", wrap_b=[])


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _launch_file(root: Path, hosts: Hosts) -> Path:
    keys = root / "keys"
    keys.mkdir(mode=0o700)
    for name in ("server", "node", "host-b", "client"):
        zmq.auth.create_certificates(str(keys), name)
    pub, sub, front, back = _free_ports(4)
    backend = f"tcp://{hosts.a}:{back}"
    launch = launch_file(
        "twohosts",
        node("logger", LoggerConfig(store=StoreConfig(path="log.store"))),
        node("loader", LoaderConfig(pinned=DETECTOR)),
        node("ingest", IngestConfig(frontend=f"tcp://{hosts.a}:{front}", backend=backend)),
        node(
            "remote",
            WorkerConfig(
                backend=backend,
                warm_height=96,
                warm_width=160,
                engine=EngineConfig(intra_op_threads=1),
            ),
            host="b",
            key="host-b",
            replicas=2,
        ),
        hosts={"a": hosts.a, "b": hosts.b},
        bus=BusSpec(host="a", pub_port=pub, sub_port=sub),
        security=SecuritySpec(keys_dir="keys", allowed=["client"]),
    )
    return write(launch, root)


def test_requests_on_host_a_are_served_by_workers_on_host_b(hosts: Hosts) -> None:
    """Each host starts its share of one launch file; requests entering the ingest on host
    A are answered by host B's workers, over Curve, and each host's graph is its own."""
    with tempfile.TemporaryDirectory(prefix="vg-", dir="/tmp") as tmp:
        root = Path(tmp)
        path = _launch_file(root, hosts)
        plan_a = load(path, root / "run-a", host="a")
        assert [p.label for p in plan_a.processes] == ["logger", "loader", "ingest"]
        assert plan_a.proxy is not None
        run = RunDir(root / "run-a")
        with (
            Launcher(plan_a, run) as launcher,
            (root / "host-b.log").open("wb") as log_b,
        ):
            launcher.start()
            # Another host's launch publishes on this bus: nobody is told it is fresh.
            assert not any(told_fresh_bus(launcher, p.label) for p in plan_a.processes)
            host_b = subprocess.Popen(
                [
                    *hosts.wrap_b,
                    sys.executable,
                    "-c",
                    "from vigil.tools.cli import main; main()",
                    "launch",
                    str(path),
                    "--host",
                    "b",
                    "--run-dir",
                    str(root / "run-b"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_b,
            )
            try:
                result = _first_result(launcher, path, host_b, root)
                assert result.worker.startswith("remote"), result.worker
                graph_b = _graph_when_written(launcher, root / "run-b")
                assert {n.host for n in graph_b.nodes} == {"b"}
                assert {n.kind for n in graph_b.nodes} == {"worker"}
                assert {n.host for n in run.read_graph().nodes} == {"a"}
            finally:
                host_b.send_signal(signal.SIGTERM)
                try:
                    host_b.wait(30)
                except subprocess.TimeoutExpired:
                    host_b.kill()
                    host_b.wait()
            assert host_b.returncode == 0, (root / "host-b.log").read_text()[-4000:]


def _graph_when_written(launcher: Launcher, run_dir: Path) -> RunGraph:
    """Host B's graph once it names every node's pid (its launcher writes it at the start,
    and again once all of its nodes are ready)."""
    deadline = time.monotonic() + 60
    while True:
        if (run_dir / "graph.json").exists():
            graph = RunDir(run_dir, create=False).read_graph()
            if graph.nodes and all(n.pid for n in graph.nodes):
                return graph
        assert time.monotonic() < deadline, "host B never wrote its graph"
        launcher.supervise(0.2)


def _first_result(
    launcher: Launcher, path: Path, host_b: subprocess.Popen[bytes], root: Path
) -> InferResult:
    """The first result the pipeline gives (no worker is up until host B has started)."""
    ingest = next(p for p in launcher.plan.processes if p.spec.kind == "ingest")
    keys = path.parent / "keys"
    curve = CurveConfig(
        server_key=str(keys / "server.key"), client_secret=str(keys / "client.key_secret")
    )
    deadline = time.monotonic() + 90
    with Client(ingest.config.frontend, name="mh", curve=curve) as client:
        while True:
            assert host_b.poll() is None, (root / "host-b.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no result from host B's workers"
            try:
                return client.infer(
                    render_scene(2, 96, 160),
                    stream_id="mh",
                    frame_ts_us=time.time_ns() // 1000,
                    deadline_s=5,
                )
            except (Unavailable, DeadlineExceeded):
                # No worker has offered credit yet, or the first batches on a cold (and
                # maybe busy) machine took longer than the deadline: supervise (which
                # waits) and ask again, until the test's own bound.
                launcher.supervise(0.5)
