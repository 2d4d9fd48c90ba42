"""End to end: frames through the launched pipeline, typed rejections, a sealed log."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq
from click.testing import CliRunner

from tests.integration.conftest import DETECTOR, pipeline_launch
from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.errors import InvalidArgument, Unavailable
from vigil.launch import Launcher, load
from vigil.nodes._scene import render_scene
from vigil.nodes.logger.store import read_entries, verify_store
from vigil.schemas import DiagCode, Heartbeat, InferResult, StateChange, Topic
from vigil.testing.launchfiles import write
from vigil.tools.cli import cli


def _client(launcher: Launcher) -> Client:
    return Client(launcher.run.ipc("ingest"), name="itest")


def test_frames_flow_end_to_end(launched: Launcher) -> None:
    """Valid frames come back as results naming the model version, with text boxes."""
    with _client(launched) as client:
        results = [
            client.infer(
                render_scene(i, 96, 160), stream_id="cam0", frame_ts_us=1000 + i, deadline_s=20
            )
            for i in range(6)
        ]
    assert all(isinstance(r, InferResult) for r in results)
    assert {r.version for r in results} == {"4.0"}
    assert {r.model for r in results} == {"ppocr-det"}
    assert sum(len(r.output.boxes) for r in results) > 0
    for r in results:
        for box in r.output.boxes:
            assert 0 <= box.x_min <= box.x_max <= 160
            assert 0 <= box.y_min <= box.y_max <= 96


@pytest.mark.verifies("SR-ING-002")
def test_invalid_frames_get_invalid_argument_with_field(launched: Launcher) -> None:
    """Broken frames are answered INVALID_ARGUMENT naming the field and the rule."""
    frame = render_scene(0, 96, 160)
    with _client(launched) as client:
        client.infer(frame, stream_id="cam1", frame_ts_us=5000, deadline_s=20)
        cases = [
            (np.ascontiguousarray(frame[:, :, :2]), 6000, "$.image.shape"),
            (frame, 5000, "$.frame_ts_us"),  # not after the last accepted timestamp
            (np.zeros((1200, 16, 3), np.uint8), 7000, "$.image.shape"),
        ]
        for bad, ts, field in cases:
            with pytest.raises(InvalidArgument) as caught:
                client.infer(bad, stream_id="cam1", frame_ts_us=ts, deadline_s=20)
            assert caught.value.reply.field == field
            assert caught.value.reply.diag_code == DiagCode.RANGE_OR_SEQUENCE
        seq = client.submit_raw(b"\xc1 not msgpack", [], deadline_s=20)
        reply = client.poll(20_000)
        assert reply is not None and reply[0] == seq
        assert isinstance(reply[1], InvalidArgument)


@pytest.mark.verifies("SR-ERR-002", "SR-LOG-003")
def test_rejections_and_state_are_sealed_in_a_verified_log(launched: Launcher) -> None:
    """Every rejection lands in the sealed store as a diagnostic; the store verifies."""
    with _client(launched) as client, pytest.raises(InvalidArgument):
        client.infer(np.zeros((8, 8, 4), np.uint8), stream_id="cam2", frame_ts_us=1)
    # Wait on the bus, not the clock: the diagnostic reaches the logger through the proxy.
    store = launched.run.path / "log.store"
    deadline = time.monotonic() + 20
    found = False
    while not found and time.monotonic() < deadline:
        launched.supervise(0.2)
        found = any(
            e.event == "diag.event"
            and msgspec.msgpack.decode(e.payload).get("code") == DiagCode.RANGE_OR_SEQUENCE
            for e in read_entries(store)
        )
    assert found
    report = verify_store(store)
    assert report.ok, report


@pytest.mark.verifies("SR-WDG-003")
def test_state_is_latched_for_late_subscribers(launched: Launcher) -> None:
    """A subscriber that joins late gets the current safety state at once."""
    with zmq.Context() as ctx, Subscriber(ctx, launched.run.sub, [Topic.SAFETY_STATE]) as sub:
        received = sub.recv(5000)
    assert received is not None
    assert isinstance(received.body, StateChange)


def test_topic_tools_find_the_running_launch(launched: Launcher) -> None:
    """`vigil topic list` names every topic with its type; `hz` reports a rate."""
    runner = CliRunner()
    listed = runner.invoke(cli, ["topic", "list", "--run-dir", str(launched.run.path)])
    assert listed.exit_code == 0, listed.output
    assert "infer/result" in listed.output and "infer.result" in listed.output
    assert "health/heartbeat" in listed.output
    rate = runner.invoke(
        cli,
        [
            "topic",
            "hz",
            "health/heartbeat",
            "--run-dir",
            str(launched.run.path),
            "--window",
            "1",
            "--reports",
            "1",
        ],
    )
    assert rate.exit_code == 0, rate.output
    hz = float(rate.output.split(":")[1].split("Hz")[0])
    assert hz > 0


@pytest.mark.verifies("SR-ING-004")
def test_rejections_reveal_no_internals(launched: Launcher) -> None:
    """Error replies name the code, field and rule only: no paths, tracebacks or memory."""
    frame = render_scene(0, 96, 160)
    with _client(launched) as client:
        replies = []
        for body in (b"\xc1", b"\x93\x01", b"\xdd\xff\xff\xff\xff", b"\x81\xa4type\xa5nope!"):
            seq = client.submit_raw(body, [], deadline_s=20)
            reply = client.poll(20_000)
            assert reply is not None and reply[0] == seq
            replies.append(reply[1])
        with pytest.raises(InvalidArgument) as caught:
            client.infer(np.ascontiguousarray(frame[:, :, :1]), stream_id="x", frame_ts_us=1)
        replies.append(caught.value)
    for error in replies:
        assert isinstance(error, InvalidArgument)
        text = " ".join((error.reply.message, error.reply.field, error.reply.rule))
        for leak in (
            "Traceback",
            'File "',
            str(launched.run.path),
            "/work",
            "0x7f",
            "site-packages",
        ):
            assert leak not in text, text


@pytest.mark.verifies("SR-SUP-002")
def test_only_workers_load_the_inference_engine(launched: Launcher) -> None:
    """onnxruntime's native library is mapped into worker processes and no other node."""
    for child in launched.children:
        maps = Path(f"/proc/{child.pid}/maps").read_text()
        loaded = "onnxruntime" in maps
        assert loaded == (child.plan.spec.kind == "worker"), child.plan.label


@pytest.mark.verifies("SR-SUP-003")
def test_nodes_drain_and_exit_cleanly_on_sigterm(short_tmp: Path) -> None:
    """Stopping the launch sends SIGTERM in order; every node answers what it holds, closes
    its sockets and exits 0 (the proxy last)."""
    path = write(pipeline_launch(), short_tmp, "stop.yaml")
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        with _client(launcher) as client:
            result = client.infer(
                render_scene(1, 96, 160), stream_id="c", frame_ts_us=1, deadline_s=20
            )
            assert isinstance(result, InferResult)
        children = list(launcher.children)
    codes = {c.plan.label: c.popen.returncode for c in children if c.popen is not None}
    assert codes and all(code == 0 for code in codes.values()), codes


@pytest.mark.verifies("SR-ERR-001")
def test_no_active_model_is_a_fast_unavailable_not_a_timeout(short_tmp: Path) -> None:
    """With no verified model (the pinned one is refused), every request is refused at once
    with UNAVAILABLE and its own diagnostic code, long before its deadline, and the watchdog
    does not count these as inference timeouts (it stays NORMAL)."""
    launch = pipeline_launch()
    # A digest the file cannot have: the pinned model is refused, none is active.
    refused = {"pinned": {**msgspec.to_builtins(DETECTOR), "sha256": "0" * 64}}
    changes: dict[str, dict[str, object]] = {
        "loader": {"config": refused},
        "worker": {"replicas": 1},
    }
    nodes = [msgspec.structs.replace(n, **changes.get(n.kind, {})) for n in launch.nodes]
    path = write(msgspec.structs.replace(launch, nodes=nodes), short_tmp, "nomodel.yaml")
    run = RunDir(short_tmp / "run")
    frame = render_scene(0, 96, 160)
    with (
        Launcher(load(path, run.path), run) as launcher,
        Subscriber(launcher.ctx, run.sub, [Topic.HEARTBEAT]) as beats,
    ):
        launcher.start()
        with _client(launcher) as client:
            for ts in range(1, 6):
                # A deadline far beyond the test's own timeout: only a fast refusal passes.
                with pytest.raises(Unavailable) as refused:
                    client.infer(frame, stream_id="cam0", frame_ts_us=ts, deadline_s=600)
                assert refused.value.reply.diag_code == DiagCode.NO_MODEL
        detail: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while int(detail.get("errors_seen", "0")) < 5:
            assert time.monotonic() < deadline, f"the watchdog never saw the errors: {detail}"
            got = beats.recv(100)
            if got is not None and isinstance(got.body, Heartbeat) and got.body.kind == "watchdog":
                detail = got.body.detail
        assert detail["timeouts_seen"] == "0"
        assert detail["state"] == "NORMAL"
