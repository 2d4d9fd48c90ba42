"""Group commit: byte ranges handed to msync, inline or on a committer thread outside the GIL."""

from __future__ import annotations

import threading
from collections.abc import Callable

from vigil.nodes.logger._config import StoreStats
from vigil.nodes.logger._errors import StoreIOError
from vigil.nodes.logger._medium import Medium

__all__ = ["Committer", "Request"]

# A commit request: byte range [lo, hi), last sequence number in it, when its oldest entry
# was appended, and its id.
Request = tuple[int, int, int, int, int]


class Committer:
    """Makes byte ranges of the medium durable and says how far the store is committed.

    With `background` the msync runs on a committer thread, so a group commit overlaps with
    sealing the next entries; requests handed over while one is in flight are merged. Without
    it each request is synced inline. Requests are numbered; a waiter waits for its own
    (merged ones take the last).
    """

    def __init__(
        self,
        medium: Medium,
        stats: StoreStats,
        *,
        latency_ns: int,
        monotonic_ns: Callable[[], int],
        background: bool,
    ) -> None:
        self._medium = medium
        self._stats = stats
        self._mono = monotonic_ns
        self._latency_ns = latency_ns
        # How long after the first uncommitted append a commit is started; adapts to msync.
        self.trigger_ns = latency_ns
        self._background = background
        self._cv = threading.Condition()
        self._pending: Request | None = None
        self._request_id = 0
        self._synced_id = 0
        self._stopping = False
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None

    @property
    def last_id(self) -> int:
        """The id of the last request handed over (waiting for it waits for all before)."""
        return self._request_id

    def start(self) -> None:
        """Start the committer thread when the store commits in the background."""
        if self._background:
            self._thread = threading.Thread(target=self._run, name="vigil-log-commit", daemon=True)
            self._thread.start()

    def submit(self, lo: int, hi: int, seq: int, first: int) -> int:
        """Hand over `[lo, hi)` holding entries up to `seq`, the oldest appended at `first`;
        returns the request's id."""
        self._request_id += 1
        request = (lo, hi, seq, first, self._request_id)
        if self._thread is None:
            try:
                self._sync(request)
            except OSError as exc:
                raise StoreIOError(self._stats.committed_seq, exc) from exc
            return self._request_id
        with self._cv:
            if self._error is not None:
                raise StoreIOError(self._stats.committed_seq, self._error)
            pending = self._pending
            if pending is not None:
                request = (
                    min(pending[0], request[0]), max(pending[1], request[1]), request[2],
                    min(pending[3], request[3]), request[4],
                )  # fmt: skip
            self._pending = request
            self._cv.notify_all()
        return self._request_id

    def wait(self, request_id: int) -> None:
        """Return once request `request_id` is durable; StoreIOError when an msync failed."""
        if self._thread is None:
            return
        with self._cv:
            while self._synced_id < request_id and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise StoreIOError(self._stats.committed_seq, self._error)

    def _sync(self, request: Request) -> None:
        lo, hi, seq, first, request_id = request
        began = self._mono()
        self._medium.sync(lo, hi - lo)
        done = self._mono()
        stats = self._stats
        with self._cv:
            stats.committed_seq = max(stats.committed_seq, seq)
            self._synced_id = max(self._synced_id, request_id)
            stats.commits += 1
            latency = (done - first) / 1e6
            stats.last_commit_latency_ms = latency
            stats.max_commit_latency_ms = max(stats.max_commit_latency_ms, latency)
            # Start the next commit early by the time this msync took, so that append-to-durable
            # stays within the configured latency.
            self.trigger_ns = max(self._latency_ns // 4, self._latency_ns - (done - began))
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stopping:
                    self._cv.wait()
                request = self._pending
                if request is None:
                    return
                self._pending = None
            try:
                self._sync(request)
            except OSError as exc:
                with self._cv:
                    self._error = exc
                    self._cv.notify_all()
                return

    def stop(self) -> None:
        """Let the thread finish what was handed over, then join it; idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        thread.join()
