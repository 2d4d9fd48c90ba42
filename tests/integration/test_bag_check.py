"""A recording replayed through a fresh pipeline: an unchanged one passes, another model fails."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.launch import Launcher, LaunchFile, load
from vigil.nodes.demo_source import SourceConfig
from vigil.nodes.ingest import IngestConfig
from vigil.schemas import InferResult, Topic
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import signed_pair
from vigil.testing.pipeline import classifier_serving
from vigil.tools.bag import RecordConfig, Recorder, RecordStats, bag_info
from vigil.tools.bag.check import PROBE_STREAM, CheckConfig, check_recording, run_check
from vigil.tools.cli import cli

FRAMES = 40
WAIT_S = 20.0


def _launch(root: Path, trusted: Path, version: str | None = None) -> LaunchFile:
    return launch_file(
        "check",
        *classifier_serving(root, trusted, version=version),
        node("ingest", IngestConfig(default_deadline_ms=10000)),
        # The recording's requests replace the source when the pipeline is checked.
        node("source", SourceConfig(rate_hz=1, height=32)),
    )


def _frame(i: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Flat colours that sweep the cube: the two model versions disagree on most of them."""
    colour = np.array([(37 * i) % 256, (91 * i + 60) % 256, (53 * i + 120) % 256], np.uint8)
    return np.broadcast_to(colour, (32, 32, 3)).copy()


def _record(launcher: Launcher, out: Path) -> RecordStats:
    """Record requests and their outcomes while a client sends FRAMES frames."""
    config = RecordConfig(
        output=str(out), topics=(Topic.INFER_REQUEST, Topic.INFER_RESULT, Topic.INFER_ERROR)
    )
    recorder = Recorder(config, launcher.run.sub)
    done: list[RecordStats] = []
    thread = threading.Thread(target=lambda: done.append(recorder.run(launcher.ctx)))
    thread.start()
    try:
        with Client(launcher.run.ipc("ingest"), name="driver", ctx=launcher.ctx) as client:
            # Until one result is in the bag the recorder's subscriptions may still be on
            # their way to the ingest: warm up on another stream until then.
            ts = 0
            while not recorder.wait_for(lambda s: s.topics.get(Topic.INFER_RESULT, 0) > 0, 0.01):
                ts += 1
                assert ts < 2000, "the recorder never saw a result"
                assert isinstance(
                    client.infer(_frame(0), stream_id="warm", frame_ts_us=ts, deadline_s=10),
                    InferResult,
                )
            recorded = recorder.stats().topics.get(Topic.INFER_RESULT, 0)
            for i in range(FRAMES):
                client.submit(_frame(i), stream_id="cam", frame_ts_us=1000 + i, deadline_s=10)
                while client.in_flight >= 4:
                    reply = client.poll(WAIT_S * 1000)
                    assert reply is not None and isinstance(reply[1], InferResult), reply
            while client.in_flight:
                reply = client.poll(WAIT_S * 1000)
                assert reply is not None and isinstance(reply[1], InferResult), reply
        assert recorder.wait_for(
            lambda s: s.topics.get(Topic.INFER_RESULT, 0) >= recorded + FRAMES, WAIT_S
        ), recorder.stats()
    finally:
        recorder.request_stop()
        thread.join(WAIT_S)
        recorder.close()
    return done[0]


def test_bag_check_passes_unchanged_and_names_a_changed_model(short_tmp: Path) -> None:
    """A recording checks clean against its own launch and fails, naming the outputs that
    differ, against a launch that pins the other model version."""
    root, trusted, _ = signed_pair(short_tmp)
    same = write(_launch(root, trusted), short_tmp, "same.yaml")
    pinned = write(_launch(root, trusted, version="2"), short_tmp, "pinned.yaml")
    bag = short_tmp / "drive.mcap"
    run = RunDir(short_tmp / "run")
    with Launcher(load(same, run.path), run) as launcher:
        launcher.start()
        stats = _record(launcher, bag)
        top = CliRunner().invoke(
            cli, ["top", "--once", "--window", "0.3", "--run-dir", str(run.path)]
        )
    assert stats.lost == 0
    assert top.exit_code == 0, top.output
    assert "tiny" in top.output  # the model each worker serves

    info = bag_info(bag)
    counts = {t.topic: t.messages for t in info.topics}
    assert counts[Topic.INFER_REQUEST] >= FRAMES and counts[Topic.INFER_RESULT] >= FRAMES
    listed = CliRunner().invoke(cli, ["bag", "info", str(bag)])
    assert listed.exit_code == 0 and Topic.INFER_REQUEST in listed.output

    # The warm-up ran while the recorder's subscriptions were still on their way: a warm-up
    # request may be in the bag without its result. Only the drive itself is checked.
    drive_only = CheckConfig(exclude_streams=(PROBE_STREAM, "warm"))
    report, replay = run_check(bag, same, config=drive_only)
    assert report.passed, report.differences[:5]
    assert replay.results >= FRAMES and replay.errors == 0
    assert set(replay.serving.values()) == {"tiny 1"}
    assert report.topics[Topic.INFER_RESULT].matched >= FRAMES

    regressed = check_recording(bag, pinned)
    assert not regressed.passed
    differing = {(d.key, d.path) for d in regressed.differences}
    assert ("stream_id=cam frame_ts_us=1000", "$.version") in differing
    assert any(path.endswith(".class_id") for _, path in differing)
    cli_check = CliRunner().invoke(cli, ["bag", "check", str(bag), "--launch", str(pinned)])
    assert cli_check.exit_code == 1
    assert "FAIL" in cli_check.output and "class_id" in cli_check.output
