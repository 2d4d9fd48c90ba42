"""Log lines name their node and carry the trace bound around them."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from vigil.bus.envelope import TraceContext
from vigil.nodes import _logging
from vigil.nodes._logging import (
    configure_logging,
    current_trace,
    log_stream,
    set_identity,
    traced,
)

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def lines() -> Iterator[Lines]:
    """structlog writing JSON lines to a buffer; the global configuration restored after."""
    stream = io.StringIO()
    before = _logging.identity()
    configure_logging(stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    structlog.reset_defaults()
    _logging._IDENTITY.identity = before


def test_every_line_names_the_node(lines: Lines) -> None:
    """The identity set once is on every line, without binding it per logger."""
    set_identity("worker", 2, "worker")
    structlog.get_logger().info("batch.done", size=4)
    (line,) = lines()
    assert line["node"] == "worker" and line["instance"] == 2 and line["kind"] == "worker"
    assert line["event"] == "batch.done" and line["level"] == "info" and "timestamp" in line


def test_explicit_node_wins_over_the_identity(lines: Lines) -> None:
    """A line about another node keeps the node it names."""
    set_identity("launcher")
    structlog.get_logger().warning("node.exited", node="ingest")
    assert lines()[0]["node"] == "ingest"


def test_traced_block_adds_the_w3c_ids_and_removes_them_after(lines: Lines) -> None:
    """Inside `traced` lines carry the hex ids; outside they carry none."""
    trace = TraceContext.new()
    log = structlog.get_logger()
    with traced(trace) as bound:
        assert bound is trace and current_trace() is trace
        log.info("request.admitted")
    log.info("idle")
    inside, outside = lines()
    assert inside["trace_id"] == trace.trace_id.hex() and len(inside["trace_id"]) == 32
    assert inside["span_id"] == trace.span_id.hex() and len(inside["span_id"]) == 16
    assert "trace_id" not in outside and "span_id" not in outside
    assert current_trace() is None


def test_traced_blocks_nest(lines: Lines) -> None:
    """Leaving an inner block restores the outer trace."""
    outer = TraceContext.new()
    inner = outer.child()
    log = structlog.get_logger()
    with traced(outer):
        with traced(inner):
            log.info("inner")
        log.info("outer")
    first, second = lines()
    assert first["span_id"] == inner.span_id.hex()
    assert second["span_id"] == outer.span_id.hex()
    assert first["trace_id"] == second["trace_id"] == outer.trace_id.hex()


def test_traced_none_binds_nothing(lines: Lines) -> None:
    """A request without a trace needs no branch at the call site."""
    with traced(None) as bound:
        structlog.get_logger().info("untraced")
    assert bound is None
    assert "trace_id" not in lines()[0]


def test_a_trace_does_not_leak_into_another_thread(lines: Lines) -> None:
    """The binding follows the thread that made it (the heartbeat thread stays untraced)."""
    seen: list[TraceContext | None] = []
    with traced(TraceContext.new()):
        thread = threading.Thread(target=lambda: seen.append(current_trace()))
        thread.start()
        thread.join()
    assert seen == [None]


class _Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "fmt", "console"),
    [
        (io.StringIO(), "auto", False),
        (_Terminal(), "auto", True),
        (_Terminal(), "json", False),
        (io.StringIO(), "console", True),
    ],
)
def test_format_follows_the_stream(
    stream: io.StringIO, fmt: _logging.LogFormat, console: bool
) -> None:
    """`auto` writes console lines to a terminal and JSON lines to anything else."""
    configure_logging(stream, fmt)
    try:
        structlog.get_logger().info("launch.ready", nodes=9)
    finally:
        structlog.reset_defaults()
    text = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())  # colours, on a terminal
    if console:
        assert not text.startswith("{")
        assert "launch.ready" in text and "nodes=9" in text and "[info" in text
    else:
        line = json.loads(text)
        assert line["event"] == "launch.ready" and line["nodes"] == 9


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put structlog's global configuration back after a test that changes it."""
    yield
    structlog.reset_defaults()


@pytest.mark.verifies("SR-DSK-001")
@pytest.mark.usefixtures("restore_logging")
def test_a_full_disk_costs_log_lines_not_the_process() -> None:
    """Writing to a device that is always full (ENOSPC) drops and counts the lines."""
    with open("/dev/full", "w") as full:
        configure_logging(full)
        structlog.get_logger().info("lost", n=1)
        structlog.get_logger().info("lost", n=2)
        stream = log_stream()
        assert stream is not None
        assert stream.dropped == 2
        assert stream.errno == errno.ENOSPC
        assert not stream.broken


@pytest.mark.verifies("SR-DSK-001", "SR-SUP-007")
@pytest.mark.usefixtures("restore_logging")
def test_a_closed_reader_is_seen_as_broken() -> None:
    """A pipe whose reader went away (EPIPE) is marked broken instead of raising."""
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as pipe:
        configure_logging(pipe)
        structlog.get_logger().info("nobody reads this")
        stream = log_stream()
        assert stream is not None and stream.broken
