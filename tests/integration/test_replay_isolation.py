"""A recording played into a live pipeline: its state stays its own, its log marks the replay."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from vigil.bus.pubsub import Publisher, Subscriber
from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.launch import Launcher, load
from vigil.nodes.demo_sink import SinkConfig
from vigil.nodes.logger.node import REPLAY_EVENT
from vigil.nodes.logger.store import read_entries, verify_store
from vigil.schemas import Heartbeat, SafetyState, StateChange, Topic
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import signed_pair
from vigil.testing.pipeline import FAST_INGEST, FAST_WATCHDOG, FRAME, classifier_serving
from vigil.tools.bag import PlayConfig, Player, RecordConfig, Recorder

WAIT_S = 30.0


@contextmanager
def _pipeline(folder: Path, *, sink: bool) -> Iterator[Launcher]:
    root, trusted, _ = signed_pair(folder)
    extra = [node("sink", SinkConfig())] if sink else []
    launch = launch_file(
        "live",
        *classifier_serving(root, trusted, workers=1),
        node("ingest", FAST_INGEST),
        node("watchdog", FAST_WATCHDOG),
        *extra,
    )
    run = RunDir(folder / "run")
    with Launcher(load(write(launch, folder), run.path), run) as launcher:
        launcher.start()
        yield launcher


def _record(launcher: Launcher, bag: Path) -> None:
    """Record every topic of a serving pipeline until it has beaten, served and latched."""
    with Recorder(RecordConfig(output=str(bag), all_topics=True), launcher.run.sub) as recorder:
        thread = threading.Thread(target=recorder.run, args=(launcher.ctx,))
        thread.start()
        try:
            with Client(launcher.run.ipc("ingest"), name="recorded", ctx=launcher.ctx) as client:
                for ts in range(1, 4):
                    client.infer(FRAME, stream_id="cam", frame_ts_us=ts, deadline_s=WAIT_S)
            wanted = (Topic.HEARTBEAT, Topic.SAFETY_STATE, Topic.MODEL_ACTIVE, Topic.INFER_RESULT)
            assert recorder.wait_for(lambda s: all(s.topics.get(t) for t in wanted), WAIT_S)
            assert recorder.wait_for(lambda s: s.topics.get(Topic.HEARTBEAT, 0) >= 20, WAIT_S)
        finally:
            recorder.request_stop()
            thread.join(WAIT_S)


def _watchdog_beat(sub: Subscriber, launcher: Launcher, node_name: str) -> dict[str, str]:
    """The detail of the first watchdog heartbeat whose watch list names `node_name`."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        got = sub.recv(100)
        beat = got.body if got is not None else None
        watching = beat.detail.get("watching", "") if isinstance(beat, Heartbeat) else ""
        if isinstance(beat, Heartbeat) and beat.kind == "watchdog" and node_name in watching:
            return beat.detail
        launcher.supervise(0)
    raise AssertionError(f"the watchdog never watched {node_name}")


def test_bag_play_into_a_live_pipeline_leaves_its_state_and_log_its_own(short_tmp: Path) -> None:
    """Replayed heartbeats, states and model announcements move no live node: the watchdog
    adopts no recorded node and stays NORMAL, the latched state stays the live one, and the
    logger seals the replay as replay in a store that verifies."""
    bag = short_tmp / "demo.mcap"
    with _pipeline(short_tmp / "a", sink=True) as recorded:
        _record(recorded, bag)
    with (
        _pipeline(short_tmp / "b", sink=False) as live,
        Subscriber(live.ctx, live.run.sub, [""], prefix=True) as tap,
        Publisher(live.ctx, live.run.pub, source="sentinel") as sentinel,
    ):
        config = PlayConfig(rate=20.0, wait_for_subscribers=True, wait_timeout_s=WAIT_S)
        with Player(config, [str(bag)], live.run.pub) as player:
            report = player.run(live.ctx)
        assert report.messages > 0
        # The tap takes replayed messages too: once it has them all, so has every subscriber's
        # pipe in the proxy, ahead of anything published after.
        deadline = time.monotonic() + WAIT_S
        while sum(s.replayed for s in tap.stats.values()) < report.messages:
            assert time.monotonic() < deadline, "replayed messages did not all arrive"
            tap.recv(100)
        # A live node that beats once now: the watchdog's list names it only after it has
        # handled every replayed heartbeat before it.
        beat = Heartbeat(node="sentinel", instance=0, pid=1, period_ms=60_000, kind="test")
        sentinel.publish(Topic.HEARTBEAT, beat)
        detail = _watchdog_beat(tap, live, "sentinel")
        stopping = msgspec.structs.replace(beat, detail={"lifecycle": "stopping"})
        sentinel.publish(Topic.HEARTBEAT, stopping)
        assert "sink" not in detail["watching"].split(",")
        assert detail["state"] == SafetyState.NORMAL
        with Subscriber(live.ctx, live.run.sub, [Topic.SAFETY_STATE]) as late:
            latched = late.recv(int(WAIT_S * 1000))
        assert latched is not None and isinstance(latched.body, StateChange)
        assert latched.envelope.replay == 0
        assert latched.body.state is SafetyState.NORMAL
        store = live.run.path / "log.store"
        _wait_for_replay_entries(store, live)
    report_store = verify_store(store)
    assert report_store.ok, report_store
    entries = list(read_entries(store))
    replayed = [msgspec.msgpack.decode(e.payload) for e in entries if e.event == REPLAY_EVENT]
    assert {r["replay"] for r in replayed} == {player.replay}
    assert {"health.state", "model.announce"} <= {r["schema"] for r in replayed}
    # The live state changes are the live watchdog's alone: no recorded one is among them.
    states = [msgspec.msgpack.decode(e.payload) for e in entries if e.event == "health.state"]
    recorded_states = [r["body"] for r in replayed if r["schema"] == "health.state"]
    assert states and recorded_states
    assert all(s["state"] == SafetyState.NORMAL for s in states)
    assert not [s for s in recorded_states if s in states]


def _wait_for_replay_entries(store: Path, launcher: Launcher) -> None:
    deadline = time.monotonic() + WAIT_S
    while not any(e.event == REPLAY_EVENT for e in read_entries(store)):
        assert time.monotonic() < deadline, "no replay entry was sealed"
        launcher.supervise(0.1)  # waits on the launcher's control socket
