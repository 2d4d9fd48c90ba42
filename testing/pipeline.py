"""Launch and drive real pipelines from tests and benchmarks (in the spirit of launch_testing).

`classifier_launch()` writes a launch file for the small signed classifier; `LoadDriver` keeps
requests in flight through a real client while it follows the safety state on the bus, and
accounts for every request: each ends as a result, a typed error from the pipeline, or — the
only way to be *lost* — a client-side deadline with no reply at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import zmq

from vigil.bus.pubsub import Subscriber
from vigil.client import Client
from vigil.errors import DeadlineExceeded, RequestError
from vigil.launch.model import NodeSpec
from vigil.launch.supervisor import Launcher
from vigil.models.repository import RepositoryConfig
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.loader import LoaderConfig
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig
from vigil.nodes.watchdog import ProbeConfig, WatchdogConfig
from vigil.schemas import InferResult, SafetyState, StateChange, Topic
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import classifier_workers, signed_pair

__all__ = [
    "FAST_INGEST",
    "FAST_WATCHDOG",
    "LoadDriver",
    "Outcome",
    "classifier_launch",
    "classifier_serving",
]

FRAME: npt.NDArray[np.uint8] = np.full((32, 32, 3), 90, dtype=np.uint8)


# The watchdog recovers fast and probes small frames; the ingest gives up on a silent worker soon.
FAST_WATCHDOG: Final = WatchdogConfig(recovery_delay_ms=500, probe=ProbeConfig(height=32, width=32))
FAST_INGEST: Final = IngestConfig(default_deadline_ms=3000, worker_silence_ms=500)


def classifier_serving(
    root: Path,
    trusted: Path,
    *,
    workers: int = 2,
    version: str | None = None,
    fault_injection: bool = False,
) -> tuple[NodeSpec, ...]:
    """The logger, a loader of the repository's `tiny` classifier (`version`, else its
    latest) trusting the keys in `trusted`, and `workers` workers serving it."""
    repository = RepositoryConfig(
        root=str(root), model="tiny", trusted_keys=str(trusted), version=version
    )
    return (
        node("logger", LoggerConfig(store=StoreConfig(path="log.store"))),
        node("loader", LoaderConfig(repository=repository)),
        classifier_workers(workers, fault_injection=fault_injection),
    )


def classifier_launch(
    folder: Path,
    *,
    workers: int = 2,
    heartbeat_ms: int = 100,
    fault_injection: bool = True,
    watchdog: WatchdogConfig = FAST_WATCHDOG,
    ingest: IngestConfig = FAST_INGEST,
) -> Path:
    """A launch file serving the small signed classifier with a watchdog; returns its path."""
    root, trusted, _ = signed_pair(folder)
    launch = launch_file(
        "faults",
        *classifier_serving(root, trusted, workers=workers, fault_injection=fault_injection),
        node("ingest", ingest),
        node("watchdog", watchdog),
        heartbeat_ms=heartbeat_ms,
    )
    return write(launch, folder)


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
    """Closed-loop load through a real client, with the safety state followed on the bus."""

    launcher: Launcher
    in_flight: int = 4
    deadline_s: float = 3.0
    outcomes: list[Outcome] = field(default_factory=list)
    states: list[tuple[int, SafetyState, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        run = self.launcher.run
        self._client = Client(run.ipc("ingest"), name="load", ctx=self.launcher.ctx)
        self._states = Subscriber(
            self.launcher.ctx, run.sub, [Topic.SAFETY_STATE], skip_replayed=True
        )
        self._poller = zmq.Poller()
        self._poller.register(self._client.socket, zmq.POLLIN)
        self._poller.register(self._states.socket, zmq.POLLIN)
        self._sent: dict[int, int] = {}
        self._ts = 0
        self.paused = False

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
        """Top up the load, collect replies and state changes, let the launcher supervise."""
        while not self.paused and self._client.in_flight < self.in_flight:
            self.send()
        ready = dict(self._poller.poll(int(timeout_ms)))
        if ready.get(self._client.socket) or self._client.in_flight:
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
        self.launcher.supervise(0.001)

    def run_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> int:
        """Drive until `done()`; returns the monotonic time it became true."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s} s; states {self.states[-5:]}")
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

    def reached(self, state: SafetyState, after_ns: int = 0) -> bool:
        """Whether `state` was entered at or after `after_ns`."""
        return any(s is state and t >= after_ns for t, s, _ in self.states)

    def ended_since(self, after_ns: int) -> list[Outcome]:
        """Requests sent at or after `after_ns` that have ended."""
        return [o for o in self.outcomes if o.sent_ns >= after_ns]

    def close(self) -> None:
        """Close the client and the state subscriber."""
        self._client.close()
        self._states.close()

    def __enter__(self) -> LoadDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
