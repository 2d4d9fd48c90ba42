"""Play options: remapping, windows and selection, decided before any socket opens."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from vigil.bus.codec import Codec
from vigil.bus.envelope import Envelope
from vigil.schemas import Heartbeat, Topic
from vigil.tools.bag import BagWriter, PlayConfig, Player, parse_remap
from vigil.tools.bag._mcap import read_messages

CODEC = Codec()


def _bag(path: Path, topics: list[str], step_ns: int = 1_000_000) -> None:
    with BagWriter(path) as writer:
        for i, topic in enumerate(topics):
            envelope = CODEC.encode(Envelope(schema="health.heartbeat", seq=i + 1, source="t"))
            body = CODEC.encode(Heartbeat(node="t", instance=0, pid=i, period_ms=1))
            writer.add_bus_message(topic, envelope, body, log_time_ns=5_000 + i * step_ns)


def test_remap_parses_ros_style_pairs() -> None:
    """OLD:=NEW pairs become a mapping."""
    assert parse_remap(["a/b:=c/d", "x:=y"]) == {"a/b": "c/d", "x": "y"}


@pytest.mark.parametrize("bad", ["a/b", ":=c", "a:=", "a=b"])
def test_remap_refuses_malformed_pairs(bad: str) -> None:
    """A remap without both sides of := is a ValueError."""
    with pytest.raises(ValueError, match="OLD:=NEW"):
        parse_remap([bad])


def test_rate_must_be_positive() -> None:
    """A zero rate is refused by the configuration."""
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"rate": 0}, PlayConfig)


def test_player_lists_the_remapped_topics_it_will_publish(tmp_path: Path) -> None:
    """Selection and remapping decide the topics waited for, before anything is sent."""
    path = tmp_path / "b.mcap"
    _bag(path, [Topic.HEARTBEAT, Topic.DIAGNOSTIC, Topic.LOG])
    config = PlayConfig(exclude=("^log/",), remap={Topic.HEARTBEAT: "replay/hb"})
    with Player(config, [str(path)], "ipc:///nonexistent") as player:
        assert player.topics == [Topic.DIAGNOSTIC, "replay/hb"]


def test_offset_and_duration_set_the_window(tmp_path: Path) -> None:
    """start_offset and duration set the recorded span one pass covers."""
    path = tmp_path / "w.mcap"
    _bag(path, [Topic.HEARTBEAT] * 11, step_ns=100_000_000)
    config = PlayConfig(start_offset_s=0.2, duration_s=0.5)
    with Player(config, [str(path)], "ipc:///nonexistent") as player:
        assert player.origin_ns == 5_000 + 200_000_000
        assert player.span_ns == 500_000_000


def test_player_needs_a_bag() -> None:
    """A player with no files is a ValueError."""
    with pytest.raises(ValueError, match="nothing to play"):
        Player(PlayConfig(), [], "ipc:///nonexistent")


def test_exclude_topics_leaves_names_out_like_ros2_bag_play(tmp_path: Path) -> None:
    """--exclude-topic names a topic exactly; --topics keeps only the named ones."""
    path = tmp_path / "x.mcap"
    _bag(path, [Topic.HEARTBEAT, Topic.SAFETY_STATE, Topic.DIAGNOSTIC, "diag/eventful"])
    excluded = PlayConfig(exclude_topics=(Topic.HEARTBEAT, Topic.DIAGNOSTIC))
    with Player(excluded, [str(path)], "ipc:///nonexistent") as player:
        assert player.topics == ["diag/eventful", Topic.SAFETY_STATE]
    only = PlayConfig(topics=(Topic.HEARTBEAT,))
    with Player(only, [str(path)], "ipc:///nonexistent") as player:
        assert player.topics == [Topic.HEARTBEAT]


def test_every_published_envelope_is_marked_with_the_replay_id(tmp_path: Path) -> None:
    """Play changes the envelope's replay id (and per loop its session), nothing else."""
    path = tmp_path / "m.mcap"
    _bag(path, [Topic.HEARTBEAT])
    with Player(PlayConfig(), [str(path)], "ipc:///nonexistent") as player:
        (message,) = list(read_messages([str(path)]))
        first = CODEC.decode_envelope(player._frames_of(message, 0)[1])
        second = CODEC.decode_envelope(player._frames_of(message, 1)[1])
    recorded = CODEC.decode_envelope(message.envelope_bytes)
    assert player.replay != 0
    assert first == msgspec.structs.replace(recorded, replay=player.replay)
    assert second.replay == player.replay and second.session != recorded.session
