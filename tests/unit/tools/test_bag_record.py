"""Recording options: topic selection, configuration checks and the metadata a bag carries."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
import zmq

from vigil.bus.rundir import GraphNode, RunDir, RunGraph
from vigil.tools.bag import RecordConfig, Recorder, TopicFilter
from vigil.tools.bag.record import host_metadata, launch_metadata


def test_exact_names_are_subscribed_exactly() -> None:
    """Topic names alone let the publishers filter: they are the subscriptions."""
    select = TopicFilter(["infer/result"])
    assert select.subscriptions(["model/active"]) == (["infer/result", "model/active"], False)
    assert select("infer/result")
    assert not select("infer/request")


def test_patterns_subscribe_to_everything_and_filter_here() -> None:
    """An include pattern needs every topic on the socket, filtered by regex."""
    select = TopicFilter(include=["^infer/"], exclude=["request$"])
    assert select.subscriptions() == ([""], True)
    assert select("infer/result")
    assert not select("infer/request")
    assert not select("health/heartbeat")


def test_exclude_wins_over_all() -> None:
    """--all with --exclude drops the excluded topics."""
    select = TopicFilter(all_topics=True, exclude=["^log/"])
    assert select("diag/event")
    assert not select("log/record")


def test_config_needs_a_topic_choice() -> None:
    """A recording with no topics, no --all and no pattern is refused."""
    with pytest.raises(msgspec.ValidationError, match="choose topics"):
        msgspec.convert({"output": "x.mcap"}, RecordConfig)


def test_config_refuses_a_bad_pattern() -> None:
    """An invalid regex is a validation error naming the pattern."""
    with pytest.raises(msgspec.ValidationError, match="bad pattern"):
        msgspec.convert({"output": "x.mcap", "include": ["("]}, RecordConfig)


def test_snapshot_trigger_needs_snapshot_mode() -> None:
    """--snapshot-on without snapshot mode is refused."""
    with pytest.raises(msgspec.ValidationError, match="snapshot"):
        msgspec.convert(
            {"output": "x.mcap", "all_topics": True, "snapshot_on": ["diag/event"]}, RecordConfig
        )


def test_config_refuses_unknown_keys() -> None:
    """A misspelt option is an error, never ignored."""
    with pytest.raises(msgspec.ValidationError, match="max_bag_sise"):
        msgspec.convert({"output": "x", "all_topics": True, "max_bag_sise": 1}, RecordConfig)


def test_split_and_snapshot_recordings_are_numbered() -> None:
    """Only recordings that may span files number them."""
    assert not RecordConfig(output="a.mcap", all_topics=True).numbered
    assert RecordConfig(output="a.mcap", all_topics=True, max_bag_size=10).numbered
    assert RecordConfig(output="a.mcap", all_topics=True, snapshot=True).numbered


def test_host_metadata_names_the_host() -> None:
    """Host metadata carries the hostname, platform and vigil version as strings."""
    meta = host_metadata()
    assert meta["hostname"]
    assert meta["vigil"]
    assert all(isinstance(v, str) for v in meta.values())


def test_launch_metadata_keeps_the_launch_file_text(tmp_path: Path) -> None:
    """The launch file of the run graph is stored with its text and the node list."""
    launch = tmp_path / "demo.yaml"
    launch.write_text("nodes: []\n")
    run = RunDir(tmp_path / "run")
    run.write_graph(
        RunGraph(
            launch_file=str(launch),
            launcher_pid=os.getpid(),
            started_ns=1,
            endpoints={},
            topics={"infer/result": "infer.result"},
            nodes=[GraphNode(name="ingest", kind="ingest", instance=0, pid=1)],
        )
    )
    meta = launch_metadata(run)
    assert meta["launch"] == "nodes: []\n"
    assert meta["launch_file"] == str(launch)
    assert '"ingest"' in meta["nodes"]


def test_launch_metadata_is_empty_without_a_graph(tmp_path: Path) -> None:
    """A run directory without graph.json gives no launch metadata."""
    assert launch_metadata(RunDir(tmp_path / "run")) == {}


def test_recording_stops_after_its_duration(short_tmp: Path) -> None:
    """A recording with a duration returns by itself once its clock passes it, its file
    finished, even with nothing to record."""
    config = RecordConfig(output=str(short_tmp / "quiet.mcap"), all_topics=True, duration_s=2.0)
    ticks = iter(range(0, 100 * 10**9, 10**9))  # each reading of the clock is a second later
    with (
        zmq.Context() as ctx,
        Recorder(
            config, f"ipc://{short_tmp}/nobody.sock", monotonic=lambda: next(ticks)
        ) as recorder,
    ):
        stats = recorder.run(ctx)
    assert stats.recorded == 0
    assert stats.files == [str(short_tmp / "quiet.mcap")]
    assert next(ticks) <= 5 * 10**9
