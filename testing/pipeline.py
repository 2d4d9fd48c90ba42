"""Launch and drive real pipelines from tests and benchmarks (in the spirit of launch_testing).

`classifier_launch()` writes a launch file for the small signed classifier; `LoadDriver` keeps
requests in flight through a real client while it follows the safety state on the bus, and
accounts for every request: each ends as a result, a typed error from the pipeline, or — the
only way to be *lost* — a client-side deadline with no reply at all.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt
import zmq

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir, resolve_endpoint
from vigil.client import Client
from vigil.errors import DeadlineExceeded, RequestError, VigilError
from vigil.launch.model import NodeSpec, RestartPolicy
from vigil.launch.supervisor import Launcher
from vigil.models.repository import RepositoryConfig
from vigil.nodes.contract import NodeArgs
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.loader import LoaderConfig
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig
from vigil.nodes.watchdog import ProbeConfig, WatchdogConfig
from vigil.schemas import DiagnosticEvent, InferResult, SafetyState, StateChange, Topic
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import classifier_workers, signed_pair

__all__ = [
    "FAST_INGEST",
    "FAST_WATCHDOG",
    "FRAME",
    "ExternalLaunch",
    "Interrupted",
    "LoadDriver",
    "Outcome",
    "child_pid",
    "classifier_launch",
    "classifier_serving",
    "ingest_endpoints",
    "ingest_names",
    "ingest_nodes",
    "restarted",
]

FRAME: npt.NDArray[np.uint8] = np.full((32, 32, 3), 90, dtype=np.uint8)


# The watchdog recovers fast and probes small frames; the ingest gives up on a silent worker soon.
FAST_WATCHDOG: Final = WatchdogConfig(recovery_delay_ms=500, probe=ProbeConfig(height=32, width=32))
FAST_INGEST: Final = IngestConfig(default_deadline_ms=3000, worker_silence_ms=500)


def ingest_names(count: int) -> list[str]:
    """The node names (and socket names) of `count` ingests: `ingest`, `ingest-b`, ..."""
    return ["ingest", *(f"ingest-{chr(ord('a') + i)}" for i in range(1, count))]


def _backend(name: str) -> str:
    return "workers" + name.removeprefix("ingest")


def classifier_serving(
    root: Path,
    trusted: Path,
    *,
    workers: int = 2,
    version: str | None = None,
    fault_injection: bool = False,
    ingests: int = 1,
) -> tuple[NodeSpec, ...]:
    """The logger, a loader of the repository's `tiny` classifier (`version`, else its
    latest) trusting the keys in `trusted`, and `workers` workers serving it (through each of
    `ingests` ingests)."""
    repository = RepositoryConfig(
        root=str(root), model="tiny", trusted_keys=str(trusted), version=version
    )
    backends = [_backend(name) for name in ingest_names(ingests)]
    return (
        node("logger", LoggerConfig(store=StoreConfig(path="log.store"))),
        node("loader", LoaderConfig(repository=repository)),
        classifier_workers(
            workers,
            fault_injection=fault_injection,
            backend=backends[0] if ingests == 1 else backends,
        ),
    )


def ingest_nodes(ingest: IngestConfig, count: int) -> list[NodeSpec]:
    """`count` ingests configured as `ingest`, each with its own frontend and backend."""
    return [
        node(
            name,
            msgspec.structs.replace(ingest, frontend=name, backend=_backend(name)),
        )
        for name in ingest_names(count)
    ]


def classifier_launch(
    folder: Path,
    *,
    workers: int = 2,
    ingests: int = 1,
    heartbeat_ms: int = 100,
    fault_injection: bool = True,
    watchdog: WatchdogConfig = FAST_WATCHDOG,
    ingest: IngestConfig = FAST_INGEST,
    restart: RestartPolicy | None = None,
) -> Path:
    """A launch file serving the small signed classifier with a watchdog; returns its path.

    With `ingests` > 1 the ingests are redundant (hot standby): every worker serves each, and
    the watchdog's probe fails over between them as clients do. `restart` replaces every
    node's restart policy, the proxy's included (a bench that kills a node many times needs
    more restarts).
    """
    root, trusted, _ = signed_pair(folder)
    names = ingest_names(ingests)
    probe = msgspec.structs.replace(watchdog.probe, endpoint=names[0] if ingests == 1 else names)
    launch = launch_file(
        "faults",
        *classifier_serving(
            root, trusted, workers=workers, fault_injection=fault_injection, ingests=ingests
        ),
        *ingest_nodes(ingest, ingests),
        node("watchdog", msgspec.structs.replace(watchdog, probe=probe)),
        heartbeat_ms=heartbeat_ms,
    )
    if restart is not None:
        nodes = [msgspec.structs.replace(n, restart=restart) for n in launch.nodes]
        launch = msgspec.structs.replace(launch, nodes=nodes, proxy_restart=restart)
    return write(launch, folder)


def ingest_endpoints(launcher: Launcher) -> list[str]:
    """The frontends of the launch's ingests, in start order (what a client connects to)."""
    return [
        resolve_endpoint(launcher.run, child.plan.config.frontend)
        for child in launcher.children
        if child.plan.spec.kind == "ingest"
    ]


class Interrupted(VigilError):
    """A stop signal (or a closed output) arrived while a pipeline was being driven: the
    caller stops it in order instead of waiting on."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"interrupted: {reason}")
        self.reason = reason


@dataclass(slots=True)
class Outcome:
    """How one request ended."""

    sent_ns: int
    done_ns: int
    result: InferResult | None
    error: RequestError | None

    @property
    def lost(self) -> bool:
        """No reply from the pipeline at all (the client gave up on its own)."""
        return isinstance(self.error, DeadlineExceeded) and self.error.reply.message.startswith(
            "no reply"
        )


@dataclass
class LoadDriver:
    """Closed-loop load through a real client, with the safety state and diagnostics followed
    on the bus.

    It drives the pipeline of an in-process `launcher` (whose supervision it lets run between
    steps), or — with `launcher=None` — one started elsewhere (another process), given its
    run directory and ingest endpoints.
    """

    launcher: Launcher | None
    in_flight: int = 4
    deadline_s: float = 3.0
    outcomes: list[Outcome] = field(default_factory=list)
    states: list[tuple[int, SafetyState, str]] = field(default_factory=list)
    diags: list[tuple[int, DiagnosticEvent]] = field(default_factory=list)
    run: RunDir | None = None
    endpoints: list[str] | None = None

    def __post_init__(self) -> None:
        self._own: zmq.Context[zmq.Socket[bytes]] | None = None
        if self.launcher is not None:
            ctx = self.launcher.ctx
            run = self.launcher.run
            endpoints = ingest_endpoints(self.launcher)
        else:
            assert self.run is not None and self.endpoints, "a run directory and endpoints"
            ctx = self._own = zmq.Context()
            run, endpoints = self.run, self.endpoints
        self._client = Client(endpoints, name="load", ctx=ctx)
        self._states = Subscriber(
            ctx, run.sub, [Topic.SAFETY_STATE, Topic.DIAGNOSTIC], skip_replayed=True
        )
        self._poller = zmq.Poller()
        self._client.register(self._poller)
        self._poller.register(self._states.socket, zmq.POLLIN)
        self._sent: dict[int, int] = {}
        self._ts = 0
        self.paused = False

    @property
    def client(self) -> Client:
        """The client the load goes through."""
        return self._client

    @property
    def state(self) -> SafetyState | None:
        """The last safety state seen."""
        return self.states[-1][1] if self.states else None

    def send(self, stream_id: str = "load", frame: npt.NDArray[np.uint8] = FRAME) -> int:
        """Send one request now (outside the closed loop); returns its id."""
        self._ts += 1
        seq = self._client.submit(
            frame, stream_id=stream_id, frame_ts_us=self._ts, deadline_s=self.deadline_s
        )
        self._sent[seq] = time.monotonic_ns()
        return seq

    def step(self, timeout_ms: float = 20) -> None:
        """Top up the load, collect replies and state changes, let the launcher supervise.

        Interrupted once the launcher was told to stop (its handlers took the signal)."""
        if self.launcher is not None and self.launcher.stopping:
            raise Interrupted(self.launcher.stop_reason)
        while not self.paused and self._client.in_flight < self.in_flight:
            self.send()
        ready = dict(self._poller.poll(int(timeout_ms)))
        if self._client.owns(ready) or self._client.in_flight:
            while (reply := self._client.poll(0)) is not None:
                seq, outcome = reply
                sent = self._sent.pop(seq, time.monotonic_ns())
                result = outcome if isinstance(outcome, InferResult) else None
                error = outcome if isinstance(outcome, RequestError) else None
                self.outcomes.append(Outcome(sent, time.monotonic_ns(), result, error))
        if ready.get(self._states.socket):
            while (got := self._states.recv(0)) is not None:
                if isinstance(got.body, StateChange):
                    self.states.append((time.monotonic_ns(), got.body.state, got.body.cause))
                elif isinstance(got.body, DiagnosticEvent):
                    self.diags.append((time.monotonic_ns(), got.body))
        if self.launcher is not None:
            self.launcher.supervise(0.001)

    def run_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> int:
        """Drive until `done()`; returns the monotonic time it became true."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                events = self.launcher.events[-8:] if self.launcher is not None else []
                raise TimeoutError(
                    f"{what}: not within {timeout_s} s; states {self.states[-5:]};"
                    f" supervision {events}"
                )
            self.step()
        return time.monotonic_ns()

    def run_for(self, seconds: float) -> None:
        """Drive for a while (steady state)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()

    def drain(self, timeout_s: float = 30) -> None:
        """Stop sending and wait until every request has ended."""
        self.paused = True
        self.run_until(lambda: self._client.in_flight == 0, timeout_s, "drain")

    def lost(self) -> list[Outcome]:
        """The requests that ended with no reply from the pipeline at all (call `drain`
        first to count every one sent)."""
        return [o for o in self.outcomes if o.lost]

    def reached(self, state: SafetyState, after_ns: int = 0) -> bool:
        """Whether `state` was entered at or after `after_ns`."""
        return any(s is state and t >= after_ns for t, s, _ in self.states)

    def ended_since(self, after_ns: int) -> list[Outcome]:
        """Requests sent at or after `after_ns` that have ended."""
        return [o for o in self.outcomes if o.sent_ns >= after_ns]

    def close(self) -> None:
        """Close the client and the state subscriber (and the context, when it made one)."""
        self._client.close()
        self._states.close()
        if self._own is not None:
            self._own.term()

    def __enter__(self) -> LoadDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def child_pid(launcher: Launcher, label: str) -> int:
    """The pid of the launcher's child `label` (its current process)."""
    for child in launcher.children:
        if child.plan.label == label:
            return child.pid
    raise KeyError(label)


def told_fresh_bus(launcher: Launcher, label: str) -> bool:
    """Whether the launcher told `label`'s current process that the bus is fresh (from the
    arguments on its command line)."""
    argv = Path(f"/proc/{child_pid(launcher, label)}/cmdline").read_bytes().split(b"\0")
    return msgspec.json.decode(argv[3], type=NodeArgs).fresh_bus


def restarted(launcher: Launcher, label: str, old_pid: int) -> bool:
    """Whether `label` runs again, ready, as a process other than `old_pid`."""
    return any(c.plan.label == label and c.pid != old_pid and c.ready for c in launcher.children)


class ExternalLaunch:
    """`vigil launch FILE --run-dir RUN` in a process of its own (a launcher a test may kill).

    Entering waits until the launcher wrote a graph with every node's pid; leaving stops it
    (SIGTERM) if it still runs. Its stderr goes to `RUN/../launcher.log`.
    """

    def __init__(self, path: Path, run: RunDir, *, timeout_s: float = 90) -> None:
        self.path = path
        self.run = run
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ExternalLaunch:
        self.log = open(self.run.path.parent / "launcher.log", "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from vigil.tools.cli import main; main()",
                "launch",
                str(self.path),
                "--run-dir",
                str(self.run.path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        try:
            self._wait_graph()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_graph(self) -> None:
        """Wait until the graph names this launcher and every node's pid, looking again at
        each message on the bus (heartbeats flow once the proxy is up)."""
        assert self.process is not None
        deadline = time.monotonic() + self.timeout_s
        with zmq.Context() as ctx, Subscriber(ctx, self.run.sub, [Topic.HEARTBEAT]) as beats:
            while time.monotonic() < deadline:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    graph = self.run.read_graph()
                    ready = graph.launcher_pid == self.process.pid and graph.nodes
                    if ready and all(n.pid for n in graph.nodes):
                        return
                if self.process.poll() is not None:
                    raise RuntimeError(f"the launcher exited with {self.process.returncode}")
                beats.recv(100)
        raise TimeoutError(f"no graph from the launcher within {self.timeout_s} s")

    def pids(self) -> dict[str, int]:
        """Node label -> pid, as the launcher's graph says."""
        return {n.name: n.pid for n in self.run.read_graph().nodes}

    def __exit__(self, *exc: object) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        self.log.close()
