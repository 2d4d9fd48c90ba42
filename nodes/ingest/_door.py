"""The front door: how many client connections the ingest holds, and what they may cost it.

libzmq aborts the whole process when its ipc listener's `accept` meets EMFILE, and nothing
in its API refuses a connection before accepting it (unbinding the endpoint would also cut
off the sessions already accepted). Two layers keep connections from killing the ingest.
Beneath libzmq, the accept guard (`_acceptguard.c`, preloaded into the ingest process) turns
a connection that finds no descriptor free into a refused one: however fast connections
come, reaching the open-file limit refuses them instead of aborting. Above it, the door lets libzmq
accept, and watches: a socket monitor names each accepted and each closed connection's
descriptor, and the door's own thread shuts down at once every connection beyond the limit,
in total or for one peer process. libzmq then reads end-of-file and closes it itself. The
limit stays ACCEPT_MARGIN below the open-file limit, so that the door normally refuses long
before the guard must, and the node's own files still open during a storm; a storm that
outruns the door's thread (it needs the GIL and a CPU) meets the guard. The door reports the
guard's refusals with its own. Without the guard (a source tree run unbuilt, which the
ingest logs), such a storm still aborts the process.

libzmq also keeps every frame of a multipart message until its last frame arrives, with no
bound: a peer that never ends a message grows the ingest's memory without limit, and no
socket option stops it. The door watches the process's resident memory; while it is over its
threshold and still growing, it shuts down the connections of peer processes that have not
completed a message for a while (a peer streaming an endless message never does). Should
memory keep growing all the same (a process that mixes complete messages with an endless
one), it shuts down every client connection: each client reconnects, and the process lives.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import resource
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import zmq

__all__ = ["ACCEPT_MARGIN", "Door", "DoorEvent", "accept_guard", "fd_headroom", "resident_bytes"]

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
_PAGE = os.sysconf("SC_PAGE_SIZE")
_UCRED = struct.Struct("3i")
# File descriptors kept free beyond the connection limit: what may be accepted before the
# door's thread shuts the excess down (beyond it, the accept guard refuses), plus what the
# node itself opens later.
ACCEPT_MARGIN = 128
# The door's thread sleeps at least this long between looks (memory due a look soon), and at
# most `_IDLE_MS` while nothing happens (the accept guard's refusals have no event to wake it:
# they are counted and reported up to this late). Memory is looked at every quarter second
# anyway (`_LOOK_AT_LEAST_NS`), so waking more often for the count alone only costs CPU.
_TICK_MS = 10
_IDLE_MS = 250
_REPORT_EVERY_NS = 1_000_000_000
# Memory "still growing": by at least this much since the last look.
_GROWTH = 1 << 20
# Memory is looked at again before it could reach the threshold at this rate (faster than
# libzmq can receive into it), but at least this often: far below the threshold, a look every
# tick would cost more than everything else the door does.
_FILL_BYTES_PER_S = 4 << 30
_LOOK_AT_LEAST_NS = 250_000_000
# Growing this long after silent peers were cut: every connection goes.
_ESCALATE_NS = 200_000_000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_malloc_trim = getattr(_libc, "malloc_trim", None)


def accept_guard() -> Callable[[], int] | None:
    """The accept guard's count of refused connections, when the guard is preloaded into
    this process (its symbol is then in the global scope); None otherwise."""
    count = getattr(ctypes.CDLL(None), "vigil_accept_refused", None)
    if count is None:
        return None
    count.restype = ctypes.c_ulong
    count.argtypes = []
    return lambda: int(count())


_statm: dict[int, int] = {}  # pid -> descriptor of its /proc/<pid>/statm


def resident_bytes() -> int:
    """This process's resident set size, from /proc (the file is kept open: one read)."""
    pid = os.getpid()  # keyed by pid: a forked child reads its own, not its parent's
    fd = _statm.get(pid)
    if fd is None:
        fd = _statm[pid] = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
    return int(os.pread(fd, 128, 0).split()[1]) * _PAGE


def fd_headroom() -> int:
    """Raise the soft open-file limit to the hard one; return how many more files fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft - len(os.listdir("/proc/self/fd"))


def _peer_pid(fd: int) -> int:
    """The pid of the process at the other end of a unix socket (0 when unknown)."""
    cred = (ctypes.c_int * 3)()
    size = ctypes.c_uint32(ctypes.sizeof(cred))
    if _libc.getsockopt(fd, socket.SOL_SOCKET, socket.SO_PEERCRED, cred, ctypes.byref(size)):
        return 0  # not a unix socket (tcp), or already gone
    return int(cred[0])


def _shutdown(fd: int) -> None:
    """End a connection libzmq owns: it reads end-of-file and closes it itself. One system
    call on the descriptor itself, so the door keeps up with a storm of connections."""
    _libc.shutdown(fd, socket.SHUT_RDWR)  # already gone: nothing to do


@dataclass(frozen=True, slots=True)
class DoorEvent:
    """Something the door did that the node reports (a diagnostic and an audit event)."""

    what: str  # "refused" (over the connection limit) or "cut" (over the memory budget)
    count: int
    detail: str


# implements: SR-RL-003
class Door:
    """Counts a bound socket's connections from its own thread; shuts down the excess.

    Use as a context manager around the socket's life, entered before the socket binds (so
    no connection goes uncounted). The node drains `events` and reports them. `guard` reads
    the accept guard's count of refusals, which `refused` includes.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        sock: zmq.Socket[bytes],
        *,
        limit: int,
        per_peer: int,
        clock: Callable[[], int],
        idle_ns: int = 100_000_000,
        rss_threshold: int = 0,
        rss: Callable[[], int] = resident_bytes,
        forward_events: int = 0,
        forward: Callable[[list[bytes]], None] | None = None,
        guard: Callable[[], int] | None = None,
    ) -> None:
        self.limit = limit
        self.per_peer = per_peer
        self.rss_threshold = rss_threshold
        self._ctx = ctx
        self._sock = sock
        self._clock = clock
        self._idle_ns = idle_ns
        self._rss = rss
        # A socket has one monitor: other events it must report (the Curve gate's handshake
        # failures) are read here too and handed on.
        self._events = _EVENTS | (forward_events if forward is not None else 0)
        self._forward = forward
        self._guard = guard
        self._guard_seen = guard() if guard is not None else 0
        self._address = f"inproc://vigil-door-{id(self)}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-door", daemon=True)
        self._connected = threading.Event()
        self.events: queue.SimpleQueue[DoorEvent] = queue.SimpleQueue()
        self.accepted: dict[int, tuple[int, int]] = {}  # fd -> (pid, when accepted)
        self._cut: set[int] = set()  # shut down, not yet closed by libzmq
        self.heard: dict[int, int] = {}  # peer pid -> when its last complete message came
        self.refused = 0
        self.cuts = 0
        self.peak_rss = 0
        self._last_rss = 0
        self._next_look_ns = 0
        self._cut_ns = 0
        self._unreported = 0
        self._unreported_guarded = 0
        self._reported_ns = 0

    def __enter__(self) -> Self:
        self._sock.monitor(self._address, self._events)
        self._thread.start()
        if not self._connected.wait(10):
            raise RuntimeError("the door's monitor did not connect")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self.accepted)

    def heard_from(self, pid: int | None) -> None:
        """A complete message arrived from the process `pid` (ipc peers; called by the node)."""
        if pid:
            self.heard[pid] = self._clock()

    # -- the door's thread -----------------------------------------------------------------

    def _run(self) -> None:
        with self._ctx.socket(zmq.PAIR) as monitor:
            monitor.setsockopt(zmq.LINGER, 0)
            monitor.connect(self._address)
            self._connected.set()
            while not self._stop.is_set():
                if monitor.poll(self._sleep_ms()):
                    self._read(monitor)
                self._count_guarded()
                self._guard_memory()
                self._report()

    def _sleep_ms(self) -> int:
        """How long the thread may wait for a connection event: until memory is due a look,
        and at most `_IDLE_MS` (the accept guard's count and the reports): each wake-up of an
        idle thread costs CPU time the inference cores lose."""
        if not self.rss_threshold:
            return _IDLE_MS
        due_ms = (self._next_look_ns - self._clock()) // 1_000_000
        return int(min(_IDLE_MS, max(_TICK_MS, due_ms)))

    def _read(self, monitor: zmq.Socket[bytes]) -> None:
        while True:
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event, fd = struct.unpack("=hi", frames[0][:6])
            if event == zmq.EVENT_ACCEPTED:
                self._accepted(fd)
            elif event == zmq.EVENT_DISCONNECTED:
                self.accepted.pop(fd, None)
                self._cut.discard(fd)
            elif self._forward is not None:
                self._forward(frames)

    def _accepted(self, fd: int) -> None:
        # Refused (its DISCONNECTED event follows): beyond the limit, at once and cheaply.
        if len(self.accepted) >= self.limit:
            self._refuse(fd)
            return
        pid = _peer_pid(fd)
        if pid and sum(1 for other, _ in self.accepted.values() if other == pid) >= self.per_peer:
            self._refuse(fd)
            return
        self.accepted[fd] = (pid, self._clock())

    def _refuse(self, fd: int) -> None:
        _shutdown(fd)
        self.refused += 1
        self._unreported += 1

    def _count_guarded(self) -> None:
        """Count what the accept guard refused at the open-file limit since the last look."""
        if self._guard is None:
            return
        guarded = self._guard() - self._guard_seen
        self._guard_seen += guarded
        self.refused += guarded
        self._unreported += guarded
        self._unreported_guarded += guarded

    def _report(self) -> None:
        """Refusals are reported at once, then summarised at most once a second."""
        now = self._clock()
        if self._unreported and now - self._reported_ns >= _REPORT_EVERY_NS:
            guarded = self._unreported_guarded
            at_limit = f", {guarded} of them at the open-file limit" if guarded else ""
            self.events.put(
                DoorEvent(
                    "refused",
                    self._unreported,
                    f"{self._unreported} connections refused{at_limit}: {len(self.accepted)}"
                    f" open, limit {self.limit} ({self.per_peer} per peer process)",
                )
            )
            self._unreported = self._unreported_guarded = 0
            self._reported_ns = now

    def _guard_memory(self) -> None:
        """Over the memory threshold and still growing, cut the connections of silent peers;
        still growing a while after that, cut every connection."""
        if not self.rss_threshold:
            return
        now = self._clock()
        if now < self._next_look_ns:
            return
        rss = self._rss()
        headroom_ns = max(0, self.rss_threshold - rss) * 1_000_000_000 // _FILL_BYTES_PER_S
        self._next_look_ns = now + min(headroom_ns, _LOOK_AT_LEAST_NS)
        growing, self._last_rss = rss >= self._last_rss + _GROWTH, rss
        self.peak_rss = max(self.peak_rss, rss)
        if rss <= self.rss_threshold or not growing:
            return
        everyone = bool(self._cut_ns) and now - self._cut_ns >= _ESCALATE_NS
        cut = []
        for fd, (pid, since) in list(self.accepted.items()):
            last = max(self.heard.get(pid, since), since) if pid else since
            if fd not in self._cut and (everyone or now - last >= self._idle_ns):
                _shutdown(fd)
                self._cut.add(fd)
                cut.append(pid)
        if not cut:
            return
        self._cut_ns = now
        if _malloc_trim is not None:
            _malloc_trim(0)  # hand the freed frames back to the system, not only to malloc
        self.cuts += len(cut)
        whom = "every connection" if everyone else "connections of silent peers"
        self.events.put(
            DoorEvent(
                "cut",
                len(cut),
                f"resident {rss >> 20} MiB over the threshold of {self.rss_threshold >> 20} MiB"
                f" and growing: cut {len(cut)} {whom} (pids {sorted(set(cut))[:8]})",
            )
        )
