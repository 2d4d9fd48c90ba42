"""The launched logger signs its stores' checkpoints, publishes them, and rides out a full disk."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from vigil.bus.pubsub import Publisher, Subscriber
from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.node import KEY_EVENT
from vigil.nodes.logger.store import (
    ExternalCheckpoint,
    StoreConfig,
    checkpoint_path,
    load_verifier,
    parse_note,
    read_entries,
    verify_store,
)
from vigil.schemas import DiagCode, DiagnosticEvent, LogCheckpoint, Severity, Topic
from vigil.testing.launchfiles import launch_file, node, write

pytestmark = pytest.mark.verifies("SR-LOG-002", "SR-LOG-003")


def _launch(short_tmp: Path) -> tuple[Path, RunDir]:
    logger = node("logger", LoggerConfig(store=StoreConfig(path="log.store")))
    return write(launch_file("checkpoints", logger), short_tmp), RunDir(short_tmp / "run")


@pytest.fixture
def logger(short_tmp: Path) -> Iterator[Launcher]:
    """A launched logger (and the bus proxy) alone, with no signing key configured."""
    path, run = _launch(short_tmp)
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        yield launcher


def _diag(text: str) -> DiagnosticEvent:
    return DiagnosticEvent(
        code=DiagCode.RANGE_OR_SEQUENCE, severity=Severity.ERROR, node="probe", message=text
    )


def _sealed(run: Path, predicate: str) -> bool:
    return any(
        e.event == "diag.event" and predicate in msgspec.msgpack.decode(e.payload)["message"]
        for e in read_entries(run / "log.store")
    )


def test_the_logger_publishes_signed_checkpoints_that_verify_its_stores(
    logger: Launcher,
) -> None:
    """With no key configured the logger generates one into the run directory and seals that
    it did; it publishes each store's newest checkpoint on log/checkpoint, and the store
    verifies against a published checkpoint with the public key."""
    run = logger.run.path
    notes: dict[str, LogCheckpoint] = {}
    with (
        zmq.Context() as ctx,
        Publisher(ctx, logger.run.pub, source="probe") as pub,
        Subscriber(ctx, logger.run.sub, [Topic.LOG_CHECKPOINT]) as sub,
    ):
        deadline = time.monotonic() + 30
        while "log" not in notes or not _sealed(run, "checkpoint probe"):
            assert time.monotonic() < deadline, "no checkpoint published"
            pub.publish(Topic.DIAGNOSTIC, _diag("checkpoint probe"))
            got = sub.recv(100)
            while got is not None:
                if isinstance(got.body, LogCheckpoint):
                    notes[got.body.store] = got.body
                got = sub.recv(0)
    key = load_verifier(run / "log.pub")
    checkpoint, signatures = parse_note(notes["log"].note.encode())
    external = ExternalCheckpoint(checkpoint=checkpoint, signatures=signatures, source="bus")
    report = verify_store(
        run / "log.store", key=key, checkpoint=external, allow_fallback_clock=True
    )
    assert report.ok and report.verdict == "open", report.faults
    assert report.signatures.startswith("verified")
    assert checkpoint_path(str(run / "log.store")).exists()
    sealed = next(e for e in read_entries(run / "log.store") if e.event == KEY_EVENT)
    record = msgspec.msgpack.decode(sealed.payload)
    assert record["origin"].startswith("generated for this run")
    assert record["key_id"] == key.key_id.hex()
    assert verify_store(run / "log.evidence", key=key, allow_fallback_clock=True).ok


def test_a_full_disk_degrades_the_logger_and_it_keeps_sealing(short_tmp: Path) -> None:
    """When the positions file cannot be written (the disk is full), the logger publishes a
    LOG_DEGRADED diagnostic, which it seals, and goes on sealing without a restart."""
    path, run = _launch(short_tmp)
    # The positions file is written as log.store.tmp first: make that the full device.
    os.symlink("/dev/full", run.path / "log.store.tmp")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        pid = next(c.pid for c in launcher.children if c.plan.label == "logger")
        with zmq.Context() as ctx, Publisher(ctx, launcher.run.pub, source="probe") as pub:
            deadline = time.monotonic() + 30
            degraded = False
            while not (degraded and _sealed(run.path, "after the disk filled")):
                assert time.monotonic() < deadline, "the logger never reported a full disk"
                pub.publish(Topic.DIAGNOSTIC, _diag("after the disk filled"))
                launcher.supervise(0.1)
                degraded = any(
                    e.event == "diag.event"
                    and msgspec.msgpack.decode(e.payload)["code"] == DiagCode.LOG_DEGRADED
                    for e in read_entries(run.path / "log.store")
                )
        assert next(c.pid for c in launcher.children if c.plan.label == "logger") == pid
    assert verify_store(run.path / "log.store", allow_fallback_clock=True).verdict == "clean"
