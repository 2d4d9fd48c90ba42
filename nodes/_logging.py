"""Structured log lines that say which node wrote them and which trace they belong to.

Every node logs JSON lines through structlog; a person at a terminal reads the same events
through structlog's console renderer instead. Two things are added to each line here:

* the node's identity (`node`, `instance`, `kind`), set once per process as soon as the node
  knows it, so even a line logged by a library or a helper thread names its writer;
* the W3C trace (`trace_id`, `span_id`, lower-case hex) of the request being handled, bound
  with `traced(trace)` for the extent of a block. The binding lives in a context variable, so it
  follows the thread or asyncio task that made it and never leaks into another one.

`current_trace()` gives the bound trace to code that publishes, so a `LogRecord` on the bus and
the local line carry the same ids.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import structlog
from structlog.contextvars import bind_contextvars, merge_contextvars, reset_contextvars
from structlog.typing import Processor

from vigil.bus.envelope import TraceContext

__all__ = [
    "Identity",
    "LogFormat",
    "LogStream",
    "configure_logging",
    "current_trace",
    "identity",
    "log_stream",
    "processors",
    "set_identity",
    "trace_fields",
    "traced",
]

LogFormat = Literal["auto", "console", "json"]
"""How log lines are written: `console` for people, `json` (one object a line) for programs;
`auto` picks `console` when the stream is a terminal."""

_TRACE: ContextVar[TraceContext | None] = ContextVar("vigil_trace", default=None)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who writes the log lines of this process."""

    node: str
    instance: int = 0
    kind: str = ""


class _AddIdentity:
    """A structlog processor adding the process's node identity to every event.

    Process-wide on purpose: a context variable would not reach the heartbeat thread or a
    library's threads, and the identity never changes once the node has started.
    """

    __slots__ = ("identity",)

    def __init__(self) -> None:
        self.identity: Identity | None = None

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        ident = self.identity
        if ident is not None:
            # What a call bound explicitly (a launcher logging about another node) wins.
            event_dict.setdefault("node", ident.node)
            event_dict.setdefault("instance", ident.instance)
            if ident.kind:
                event_dict.setdefault("kind", ident.kind)
        return event_dict


_IDENTITY = _AddIdentity()


def set_identity(node: str, instance: int = 0, kind: str = "") -> None:
    """Name the node whose lines this process writes (called once its arguments are read)."""
    _IDENTITY.identity = Identity(node, instance, kind)


def identity() -> Identity | None:
    """The identity set for this process, if any."""
    return _IDENTITY.identity


def processors(*, console: bool = False, colors: bool = False) -> list[Processor]:
    """The processor chain of every vigil process: context, identity, level, time, rendering
    (JSON, or the console format)."""
    shared: list[Processor] = [merge_contextvars, _IDENTITY, structlog.processors.add_log_level]
    if console:
        # The console renderer formats exceptions itself (format_exc_info would spoil them).
        return [
            *shared,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=colors),
        ]
    return [
        *shared,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ]


# implements: SR-DSK-001
class LogStream:
    """The stream log lines go to, which never lets a failed write stop the process.

    A node's log is a file in the run directory and the launcher's a terminal or a pipe: a
    full disk (ENOSPC) or a reader that went away (EPIPE) must cost log lines, never the
    node. Lines that could not be written are counted; the node reports the loss on the bus
    (the heartbeat thread) and the launcher stops in order when its output is gone.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.dropped = 0
        self.errno = 0  # of the last failed write; 0 once a write succeeds again
        self._lock = threading.Lock()
        try:
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError):  # io.UnsupportedOperation is both
            self._fd = None

    def write(self, text: str) -> int:
        """Write `text` now (unbuffered for a file descriptor); never raises OSError."""
        with self._lock:
            try:
                if self._fd is None:
                    self.stream.write(text)
                else:
                    data = text.encode()
                    while data:
                        data = data[os.write(self._fd, data) :]
            except OSError as exc:
                if text != "\n":  # print() writes a line's end on its own
                    self.dropped += 1
                self.errno = exc.errno or errno.EIO
                return 0
            self.errno = 0
            return len(text)

    def flush(self) -> None:
        """Flush a buffered stream (a descriptor is written unbuffered)."""
        if self._fd is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self.errno = exc.errno or errno.EIO

    @property
    def broken(self) -> bool:
        """Whether the reader is gone (EPIPE): nothing written from now on is read."""
        return self.errno == errno.EPIPE


_STREAM: LogStream | None = None


def log_stream() -> LogStream | None:
    """The stream `configure_logging` set up in this process, if any."""
    return _STREAM


def configure_logging(stream: TextIO | None = None, fmt: LogFormat = "json") -> None:
    """Log lines on `stream` (stderr by default): JSON objects, or the console format."""
    global _STREAM  # noqa: PLW0603 - one log stream per process
    out = stream if stream is not None else sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    _STREAM = LogStream(out)
    structlog.configure(
        # NO_COLOR: the convention of https://no-color.org
        processors=processors(
            console=console, colors=console and out.isatty() and "NO_COLOR" not in os.environ
        ),
        logger_factory=structlog.PrintLoggerFactory(_STREAM),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def trace_fields(trace: TraceContext | None) -> dict[str, str]:
    """`trace_id` and `span_id` in lower-case hex (the W3C spelling), or nothing."""
    if trace is None:
        return {}
    return {"trace_id": trace.trace_id.hex(), "span_id": trace.span_id.hex()}


def current_trace() -> TraceContext | None:
    """The trace bound by the innermost `traced()` block of this thread or task."""
    return _TRACE.get()


@contextmanager
def traced(trace: TraceContext | None) -> Iterator[TraceContext | None]:
    """Within the block, every log line (and every `Node.record`) carries `trace`'s ids.

    `None` binds nothing, so callers need not branch on whether a request had a trace. Blocks
    nest: leaving one restores the trace of the block around it.
    """
    if trace is None:
        yield None
        return
    token = _TRACE.set(trace)
    bound = bind_contextvars(**trace_fields(trace))
    try:
        yield trace
    finally:
        reset_contextvars(**bound)
        _TRACE.reset(token)
