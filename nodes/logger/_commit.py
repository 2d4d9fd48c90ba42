"""Group commit: msync the entries, then write and msync the commit record that names them.

The two syncs are separate on purpose: a commit record that reached the disk proves that
every entry it names had reached it first, which is what lets verify and recovery tell a
damaged durable entry from a torn unsynced one. With a signing key the record carries the
checkpoint signature; after it is durable the signed note goes to the sidecar file, at most
once a second while commits follow each other (and the last one when committing stops).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import msgspec

from vigil.nodes.logger._checkpoint import Checkpoint, NoteSignature, Signer, note
from vigil.nodes.logger._config import StoreStats
from vigil.nodes.logger._errors import StoreIOError
from vigil.nodes.logger._format import (
    COMMIT_RECORD_BYTES,
    CommitRecord,
    Geometry,
    encode_commit,
)
from vigil.nodes.logger._medium import Medium

__all__ = ["SIDECAR_EVERY_NS", "Committer", "Request"]

# The sidecar copy is rewritten at most this often: under steady traffic a commit is due every
# few milliseconds, and a file rewrite (write, rename) per commit cost as much as its msyncs.
SIDECAR_EVERY_NS: Final = 1_000_000_000


@dataclass(slots=True, frozen=True, kw_only=True)
class Request:
    """Make `[lo, hi)` durable; with `record`, then write a commit record naming entry `seq`
    (its `chain`, where it ends, and where history starts). `first` is when the oldest entry
    in it was appended; `id` numbers the request."""

    lo: int
    hi: int
    seq: int
    chain: bytes
    tail: tuple[int, int]
    start: int
    first: int
    id: int
    record: bool


class Committer:
    """Makes byte ranges of the medium durable and says how far the store is committed.

    With `background` the msyncs run on a committer thread, so a group commit overlaps with
    sealing the next entries; requests handed over while one is in flight are merged. Without
    it each request is synced inline. Requests are numbered; a waiter waits for its own
    (merged ones take the last). `stats.committed_seq` follows the commit records.
    """

    def __init__(
        self,
        medium: Medium,
        stats: StoreStats,
        *,
        geo: Geometry,
        store_id: bytes,
        generation: int,
        signer: Signer | None,
        sidecar: Callable[[bytes], None] | None,
        latency_ns: int,
        monotonic_ns: Callable[[], int],
        background: bool,
    ) -> None:
        """`generation` numbers the next commit record; `signer` signs their checkpoints and
        `sidecar` receives each checkpoint note once its record is durable."""
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
        self._geo = geo
        self._store_id = store_id
        self._generation = generation
        self._signer = signer
        self._sidecar = sidecar
        # The newest durable checkpoint note (signed when there is a key), for the bus.
        self.note: bytes = b""
        # The newest note not yet in the sidecar, and when the sidecar may be rewritten.
        self._unsaved: bytes | None = None
        self._sidecar_due = 0

    @property
    def last_id(self) -> int:
        """The id of the last request handed over (waiting for it waits for all before)."""
        return self._request_id

    def start(self) -> None:
        """Start the committer thread when the store commits in the background."""
        if self._background:
            self._thread = threading.Thread(target=self._run, name="vigil-log-commit", daemon=True)
            self._thread.start()

    def submit(
        self,
        lo: int,
        hi: int,
        *,
        seq: int,
        chain: bytes,
        tail: tuple[int, int],
        start: int,
        first: int,
        record: bool,
    ) -> int:
        """Hand over `[lo, hi)` holding entries up to `seq`, the oldest appended at `first`;
        with `record`, a commit record follows it. Returns the request's id."""
        self._request_id += 1
        request = Request(
            lo=lo, hi=hi, seq=seq, chain=chain, tail=tail, start=start, first=first,
            id=self._request_id, record=record,
        )  # fmt: skip
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
                spans = [(r.lo, r.hi) for r in (pending, request) if r.hi > r.lo] or [(lo, lo)]
                request = replace(
                    request,
                    lo=min(a for a, _ in spans),
                    hi=max(b for _, b in spans),
                    first=min(pending.first, first),
                    record=pending.record or record,
                )
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
        began = self._mono()
        if request.hi > request.lo:
            self._medium.sync(request.lo, request.hi - request.lo)
        written: bytes | None = None
        if request.record:
            written = self._write_record(request)
        done = self._mono()
        stats = self._stats
        with self._cv:
            if request.record:
                stats.committed_seq = max(stats.committed_seq, request.seq)
                stats.history_start = request.start
            self._synced_id = max(self._synced_id, request.id)
            stats.commits += 1
            latency = (done - request.first) / 1e6
            stats.last_commit_latency_ms = latency
            stats.max_commit_latency_ms = max(stats.max_commit_latency_ms, latency)
            # Start the next commit early by the time this msync took, so that append-to-durable
            # stays within the configured latency.
            self.trigger_ns = max(self._latency_ns // 4, self._latency_ns - (done - began))
            self._cv.notify_all()
        if written is not None:
            self._unsaved = written
        if done >= self._sidecar_due:
            self._save_note(done)

    def _save_note(self, now: int) -> None:
        """Copy the newest durable note to the sidecar, if it is not there yet."""
        note = self._unsaved
        if note is None or self._sidecar is None:
            return
        self._sidecar_due = now + SIDECAR_EVERY_NS
        try:
            self._sidecar(note)
            self._unsaved = None
        except OSError as exc:
            # The ring holds the checkpoint; the copy outside it is retried when next due.
            self._stats.checkpoint_errors += 1
            self._stats.checkpoint_error = str(exc)

    def _write_record(self, request: Request) -> bytes:
        """Sign, write and msync the commit record; returns the checkpoint note."""
        geo = self._geo
        checkpoint = Checkpoint(
            store_id=self._store_id, size=request.seq, root=request.chain, start=request.start
        )
        signatures: list[NoteSignature] = []
        record = CommitRecord(
            generation=self._generation, last_seq=request.seq, chain=request.chain,
            tail=request.tail, start=request.start,
        )  # fmt: skip
        signer = self._signer
        if signer is not None:
            # CPU time of this thread: what signing costs, not the wait for the GIL.
            began = time.thread_time_ns()
            signature = signer.sign(checkpoint)
            self._stats.sign_ns += time.thread_time_ns() - began
            self._stats.signatures += 1
            record = msgspec.structs.replace(record, key_id=signer.key_id, signature=signature)
            signatures.append(NoteSignature(signer.name, signer.key_id, signature))
        offset = geo.commit_offset(self._generation)
        self._medium.write(offset, encode_commit(record))
        self._medium.sync(offset, COMMIT_RECORD_BYTES)
        self._generation += 1
        self.note = note(checkpoint, signatures)
        return self.note

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
        """Let the thread finish what was handed over, join it and copy the newest note to the
        sidecar; idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            with self._cv:
                self._stopping = True
                self._cv.notify_all()
            thread.join()
        self._save_note(self._mono())
