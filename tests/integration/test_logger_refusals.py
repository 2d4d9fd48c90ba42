"""Messages the store cannot take as they came: the logger seals why, and goes on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from vigil.bus.envelope import TraceContext
from vigil.bus.pubsub import Publisher
from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.node import REFUSED_EVENT
from vigil.nodes.logger.store import StoreConfig, read_entries, verify_store
from vigil.schemas import DiagCode, DiagnosticEvent, Severity, Topic
from vigil.testing.launchfiles import launch_file, node, write

pytestmark = pytest.mark.verifies("SR-LOG-003", "SR-ERR-002")


@pytest.fixture
def logger(short_tmp: Path) -> Iterator[Launcher]:
    """A launched logger (and the bus proxy) alone."""
    logger = node("logger", LoggerConfig(store=StoreConfig(path="log.store")))
    path = write(launch_file("refusals", logger), short_tmp)
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        yield launcher


def _diag(text: str) -> DiagnosticEvent:
    return DiagnosticEvent(
        code=DiagCode.RANGE_OR_SEQUENCE, severity=Severity.ERROR, node="probe", message=text
    )


def test_unstorable_messages_are_sealed_as_refusals_and_the_logger_goes_on(
    logger: Launcher,
) -> None:
    """A source name the store refuses (empty, or over 255 UTF-8 bytes) and a trace id that is
    neither empty nor 16 bytes each become a `log.refused` entry naming the reason and holding
    the message; the messages around them are sealed as usual, and the logger is never
    restarted."""
    pid = next(c.pid for c in logger.children if c.plan.label == "logger")
    # 64 characters, as many as an envelope allows, but 256 UTF-8 bytes: one too many.
    wide = "\N{GRINNING FACE}" * 64
    cases = [
        ("", None, "empty-source", "node"),
        (wide, None, "wide-source", "node"),
        ("probe", TraceContext(b"short", bytes(8)), "short-trace", "trace_id"),
        ("probe", None, "x" * 400, None),  # fits: the control
    ]
    with zmq.Context() as ctx:
        publishers = {}
        for source, trace, text, _ in cases:
            pub = publishers.get(source)
            if pub is None:
                pub = publishers[source] = Publisher(ctx, logger.run.pub, source=source)
            # Publishers join the bus like nodes do: until their probe returns, a PUB may drop.
            deadline = time.monotonic() + 20
            while not _sealed_texts(logger, text):
                assert time.monotonic() < deadline, f"{text!r} never reached the store"
                pub.publish(Topic.DIAGNOSTIC, _diag(text), trace=trace)
                logger.supervise(0.1)
        for pub in publishers.values():
            pub.close()
    refusals = [
        msgspec.msgpack.decode(e.payload)
        for e in read_entries(logger.run.path / "log.store")
        if e.event == REFUSED_EVENT
    ]
    for *_, word in cases:
        if word is not None:
            assert any(word in r["reason"] and r["event"] == "diag.event" for r in refusals), word
    assert all(len(r["sha256"]) == 32 and r["payload_bytes"] > 0 for r in refusals)
    assert next(c.pid for c in logger.children if c.plan.label == "logger") == pid
    assert verify_store(logger.run.path / "log.store", allow_fallback_clock=True).ok


def _sealed_texts(logger: Launcher, text: str) -> bool:
    """Whether a diagnostic with this text is in the store, as itself or inside a refusal."""
    for entry in read_entries(logger.run.path / "log.store"):
        if entry.event == "diag.event" and text in msgspec.msgpack.decode(entry.payload)["message"]:
            return True
        if entry.event == REFUSED_EVENT:
            payload = msgspec.msgpack.decode(entry.payload)
            if text in msgspec.msgpack.decode(payload["payload"])["message"]:
                return True
    return False
