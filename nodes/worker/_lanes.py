"""Lanes: the threads that run a worker's batches, and how the free cores are shared out.

The node loop keeps the sockets; a lane only runs the batch it is handed (onnxruntime
releases the GIL) and tells the loop it finished through an `inproc://` socket that the lane
thread itself creates, so no socket crosses a thread.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import psutil
import zmq

from vigil.bus.closing import Closing

__all__ = ["Finished", "Lanes", "LoneChoice", "Plan", "SpareCores", "plan"]

R = TypeVar("R")
Work = Callable[[], R]

_ids = itertools.count()


@dataclass(frozen=True, slots=True)
class Plan:
    """Batches to start now: one per lane, of these sizes; `wide` runs one on every core."""

    wide: bool
    sizes: tuple[int, ...]


# Idle cores (beyond the one this worker runs on) a wide run needs to be worth trying.
_IDLE_FOR_WIDE = 0.5


def _host_sample() -> tuple[float, float]:
    """(monotonic seconds, CPU-seconds the host has been busy)."""
    host = psutil.cpu_times()
    return time.monotonic(), sum(host) - host.idle - host.iowait


def _running_now(stat: Path = Path("/proc/stat")) -> int | None:
    """Threads on a CPU or waiting for one, host-wide, the caller included."""
    try:
        for line in stat.read_text().splitlines():
            if line.startswith("procs_running "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# How often, and how far apart, the running threads are counted again while they seem to
# leave no core: a request's hand-over keeps threads on a CPU for some tens of microseconds.
_LOOKS = 3
_LOOK_APART_S = 100e-6


class SpareCores:
    """Cores that other processes left idle since the previous call (the host's busy time
    less this process's own: its lanes keep cores busy that a wide run would take over),
    and no more than they leave idle now: a load that began a moment ago (a flood's first
    batches) counts at once, not only after a wide run has stalled on it.

    "Now" is the fewest threads running over a few looks `_LOOK_APART_S` apart: the moment a
    lone request arrives, the threads that carried it (the client's, the ingest's and the
    bus's I/O threads) are often still on a CPU, and one look alone sent about one lone
    request in seven the narrow way on an idle 2-core host. A load that began stays.
    """

    def __init__(
        self,
        *,
        host: Callable[[], tuple[float, float]] = _host_sample,
        own: Callable[[], float] | None = None,
        running: Callable[[], int | None] = _running_now,
        cores: int | None = None,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self._cores = cores or psutil.cpu_count() or 1
        self._host = host
        if own is None:
            me = psutil.Process()

            def own() -> float:
                times = me.cpu_times()
                return times.user + times.system

        self._own = own
        self._running = running
        self._pause = pause
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        return *self._host(), self._own()

    def _left_now(self, enough: float) -> float | None:
        """Cores the running threads leave, at the best of a few looks, looking no further
        once `enough` are left (None: unknown)."""
        best: float | None = None
        for look in range(_LOOKS):
            if look:
                self._pause(_LOOK_APART_S)
            running = self._running()
            if running is None:
                return best
            # Less this thread, and less one more: a request's own hand-over (the ingest
            # that just sent it, the bus relaying its evidence) is on a CPU for a moment.
            left = float(self._cores - max(0, running - 2))
            best = left if best is None else max(best, left)
            if best >= enough:
                break
        return best

    def __call__(self) -> float:
        then, host_then, own_then = self._last
        self._last = now, host_now, own_now = self._sample()
        elapsed = now - then
        if elapsed <= 0:
            return float(self._cores)
        others = max(0.0, (host_now - host_then) - (own_now - own_then)) / elapsed
        spare = self._cores - others
        if spare >= _IDLE_FOR_WIDE and (left := self._left_now(spare)) is not None:
            spare = min(spare, left)
        return max(0.0, spare)


class LoneChoice:
    """Whether a lone request runs wide, learnt from how fast each way has been.

    Wide borrows the cores this worker leaves idle; when other processes keep them busy, its
    threads wait for each other and a request runs slower than on one core (measured on a
    2-core host under load: 150 ms wide against 80 ms narrow for one ResNet-50 image, 60
    against 80 when quiet). So the worker keeps a moving average of each way's time for a
    lone frame and takes the faster. While narrow is the faster it tries wide every
    `explore_every` lone requests, to see the host quiet again; while wide is, every lone
    request runs wide: its own times show at once when it slows down, and a narrow try
    would only double one request's latency in `explore_every`.
    Wide is neither tried nor taken while the host has no idle core (`idle_cores`, in
    cores, since the last call): one wide try on a host kept busy by others can take
    seconds, each parallel section waiting for a thread the scheduler left off the CPU.
    """

    def __init__(
        self,
        *,
        explore_every: int = 16,
        weight: float = 0.25,
        idle_cores: Callable[[], float] | None = None,
        always: bool | None = None,
    ) -> None:
        self.always = always  # True/False: every lone request wide/narrow, nothing learnt
        self.explore_every = explore_every
        self.weight = weight
        self.wide_ns: float | None = None
        self.narrow_ns: float | None = None
        self._lone = 0
        self._idle_cores = idle_cores or SpareCores()

    def wide(self) -> bool:
        """Whether the next lone request runs wide."""
        self._lone += 1
        if self.always is not None:
            return self.always
        if self._idle_cores() < _IDLE_FOR_WIDE:
            return False
        if self.wide_ns is None:
            return True  # wide first: on an idle host it is the fast way
        if self.narrow_ns is None:
            return False
        if self.wide_ns <= self.narrow_ns:
            return True  # its own runs keep its time current: narrow needs no tries
        return self._lone % self.explore_every == 0

    def observe(self, *, wide: bool, elapsed_ns: int) -> None:
        """A lone frame took `elapsed_ns` on the wide or the narrow session."""
        old = self.wide_ns if wide else self.narrow_ns
        new = elapsed_ns if old is None else old + self.weight * (elapsed_ns - old)
        if wide:
            self.wide_ns = new
        else:
            self.narrow_ns = new


def plan(
    *,
    ready: int,
    idle: int,
    lanes: int,
    max_batch: int,
    split: bool = True,
    lone_wide: bool = True,
) -> Plan:
    """How to run `ready` queued requests on the `idle` lanes out of `lanes`.

    On the CPU (`split`): a lone request on an idle worker runs wide, on every core: the
    latency of one request alone (unless `lone_wide` says the narrow way is faster now, see
    `LoneChoice`). Anything more runs as parallel batches of equal size on separate lanes,
    one core share each, which wastes nothing on synchronising threads (throughput). A wide
    batch holds every lane, so nothing else starts beside it and the cores are never
    oversubscribed.

    On a GPU (no `split`): each free lane takes a full batch of what is queued, so the device
    gets the largest batches it can, one staging while the other runs.
    """
    if ready <= 0 or idle <= 0:
        return Plan(wide=False, sizes=())
    if not split:
        sizes: list[int] = []
        while ready > 0 and len(sizes) < idle:
            sizes.append(min(ready, max_batch))
            ready -= sizes[-1]
        return Plan(wide=False, sizes=tuple(sizes))
    if lanes == 1 or (idle == lanes and ready == 1 and lone_wide):
        return Plan(wide=True, sizes=(min(ready, max_batch),))
    count = min(idle, ready)
    base, extra = divmod(min(ready, count * max_batch), count)
    return Plan(wide=False, sizes=tuple(base + (i < extra) for i in range(count)))


@dataclass(frozen=True, slots=True)
class Finished(Generic[R]):
    """A batch a lane has run: its tag, and what it returned or raised."""

    tag: int
    result: R | None
    error: BaseException | None


class _Lane(threading.Thread):
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, index: int) -> None:
        super().__init__(name=f"lane-{index}", daemon=True)
        self.ctx = ctx
        self.endpoint = endpoint
        self.inbox: queue.SimpleQueue[tuple[int, Work[object]] | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[Finished[object]] = queue.SimpleQueue()

    def run(self) -> None:
        with self.ctx.socket(zmq.PUSH) as wake:
            wake.setsockopt(zmq.LINGER, 0)
            wake.connect(self.endpoint)
            while (job := self.inbox.get()) is not None:
                tag, work = job
                try:
                    done = Finished(tag, work(), None)
                # The inference engine's errors share no base below Exception; a batch's
                # failure is reported to the loop, which answers each of its requests.
                except Exception as exc:  # noqa: BLE001
                    done = Finished(tag, None, exc)
                self.outbox.put(done)
                wake.send(b"")


class Lanes(Closing, Generic[R]):
    """`count` lane threads; `start` hands one a batch, `finished` collects what ran.

    Only the node loop calls these methods. `socket` becomes readable when a lane finished.
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], count: int) -> None:
        self.count = count
        endpoint = f"inproc://vigil-lanes-{next(_ids)}"
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self._lanes = [_Lane(ctx, endpoint, i) for i in range(count)]
        self._busy: dict[int, int] = {}  # lane index -> tag
        self._wide = False
        self._tags = itertools.count(1)
        self._closed = False
        for lane in self._lanes:
            lane.start()

    @property
    def idle(self) -> int:
        """Lanes free to start a batch (none while a wide batch holds them all)."""
        return 0 if self._wide else self.count - len(self._busy)

    @property
    def busy(self) -> int:
        """Batches running."""
        return len(self._busy)

    def start(self, work: Work[R], *, wide: bool = False) -> int:
        """Run `work` on a free lane (on all of them when `wide`); returns its tag."""
        if self.idle == 0 or (wide and self._busy):
            raise RuntimeError("no free lane")  # the plan never asks for one
        index = next(i for i in range(self.count) if i not in self._busy)
        tag = next(self._tags)
        self._busy[index] = tag
        self._wide = wide
        self._lanes[index].inbox.put((tag, work))
        return tag

    def finished(self) -> list[Finished[R]]:
        """The batches that ended since the last call (their lanes are free again)."""
        while True:
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        out: list[Finished[R]] = []
        for index, tag in list(self._busy.items()):
            lane = self._lanes[index]
            try:
                done = lane.outbox.get_nowait()
            except queue.Empty:
                continue
            assert done.tag == tag  # a lane runs one batch at a time
            del self._busy[index]
            out.append(done)  # type: ignore[arg-type]
        if not self._busy:
            self._wide = False
        return out

    def wait(self, timeout_ms: int) -> list[Finished[R]]:
        """Block up to `timeout_ms` for a batch to end; what `finished` returns then."""
        if self._busy:
            self.socket.poll(timeout_ms)
        return self.finished()

    def close(self) -> None:
        """Let each lane finish its batch, then stop the threads and close the socket."""
        if self._closed:
            return
        self._closed = True
        for lane in self._lanes:
            lane.inbox.put(None)
        for lane in self._lanes:
            lane.join()
        self.socket.close(linger=0)
