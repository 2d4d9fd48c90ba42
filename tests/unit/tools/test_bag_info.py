"""`vigil bag info`: summaries of whole and cut-off bags, as text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from vigil.bus.codec import Codec
from vigil.bus.envelope import Envelope
from vigil.schemas import Heartbeat, Topic
from vigil.tools.bag import BagWriter, bag_info, format_info
from vigil.tools.bag_cmd import bag

CODEC = Codec()


def _bag(path: Path, count: int) -> None:
    with BagWriter(path, chunk_size=1_000) as writer:
        writer.add_metadata("vigil.host", {"hostname": "edge-7", "platform": "linux"})
        writer.add_metadata("vigil.model", {"name": "det", "version": "2", "sha256": "ab" * 32})
        for i in range(count):
            envelope = CODEC.encode(Envelope(schema="health.heartbeat", seq=i + 1, source="t"))
            body = CODEC.encode(Heartbeat(node="t", instance=0, pid=i, period_ms=1))
            writer.add_bus_message(
                Topic.HEARTBEAT, envelope, body, log_time_ns=1_000_000_000 + i * 10**7
            )


def test_info_of_a_finished_bag_comes_from_its_summary(tmp_path: Path) -> None:
    """A finished bag reports counts, span, compression and metadata."""
    path = tmp_path / "a.mcap"
    _bag(path, 101)
    info = bag_info(path)
    assert info.complete
    assert info.messages == 101
    assert info.duration_s == 1.0
    assert info.compression == ["zstd"]
    assert info.topics[0].topic == Topic.HEARTBEAT
    assert info.topics[0].schema == "vigil.bag.Record[Heartbeat]"
    assert info.metadata["vigil.host"]["hostname"] == "edge-7"
    assert info.metadata["vigil.model/det"]["version"] == "2"


def test_info_of_a_cut_bag_counts_whole_chunks(tmp_path: Path) -> None:
    """A bag without its summary is read through and reported incomplete."""
    path = tmp_path / "a.mcap"
    _bag(path, 101)
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])
    info = bag_info(cut)
    assert not info.complete
    assert 0 < info.messages < 101
    assert info.metadata["vigil.host"]["hostname"] == "edge-7"
    assert "incomplete" in format_info(info)


def test_info_command_prints_text_and_json(tmp_path: Path) -> None:
    """`bag info` prints the text summary, or JSON with --json."""
    path = tmp_path / "a.mcap"
    _bag(path, 3)
    runner = CliRunner()
    text = runner.invoke(bag, ["info", str(path)])
    assert text.exit_code == 0, text.output
    assert "health/heartbeat" in text.output
    assert "Model:         det 2" in text.output
    as_json = runner.invoke(bag, ["info", "--json", str(path)])
    assert json.loads(as_json.output)[0]["messages"] == 3


def test_info_command_refuses_a_non_bag(tmp_path: Path) -> None:
    """`bag info` on a file that is not a bag exits non-zero with the reason."""
    path = tmp_path / "x.mcap"
    path.write_text("not a bag")
    result = CliRunner().invoke(bag, ["info", str(path)])
    assert result.exit_code == 1
    assert "not an MCAP file" in result.output
