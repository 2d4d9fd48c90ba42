"""The bag format: bus frames in MCAP, read back whole, cut off or corrupted."""

from __future__ import annotations

import io
import json
import os
import random
import struct
from pathlib import Path

import msgspec
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer

from vigil.bus.codec import Codec
from vigil.bus.envelope import Envelope
from vigil.errors import IntegrityError
from vigil.schemas import Heartbeat, Topic
from vigil.tools.bag import BagError, BagFormatError, BagReader, BagWriter, read_messages
from vigil.tools.bag._mcap import record_schema

CODEC = Codec()


def _frames(i: int) -> tuple[bytes, bytes, list[bytes]]:
    envelope = CODEC.encode(Envelope(schema="health.heartbeat", seq=i + 1, source="t"))
    body = CODEC.encode(Heartbeat(node="t", instance=0, pid=i, period_ms=100))
    return envelope, body, [bytes([i % 256]) * (i % 7)]


def _write(path: Path, count: int, *, flush_every: int = 0) -> list[int]:
    """Write `count` heartbeats; with `flush_every`, cut a chunk every so many messages and
    return the cumulative message count after each chunk."""
    cuts: list[int] = []
    with BagWriter(path, chunk_size=1 << 30 if flush_every else 1 << 20) as writer:
        for i in range(count):
            envelope, body, buffers = _frames(i)
            writer.add_bus_message(
                Topic.HEARTBEAT, envelope, body, buffers, log_time_ns=1_000 + i, sequence=i + 1
            )
            if flush_every and (i + 1) % flush_every == 0:
                writer.flush()
                cuts.append(i + 1)
    if flush_every and count % flush_every:
        cuts.append(count)
    return cuts


def _chunk_ends(data: bytes) -> tuple[list[int], int]:
    """End offsets of the top-level chunk records of a complete file, and of its data section."""
    ends, pos = [], 8
    while pos + 9 <= len(data):
        opcode, length = struct.unpack_from("<BQ", data, pos)
        pos += 9 + length
        if opcode == 0x06:
            ends.append(pos)
        if opcode == 0x0F:
            break
    return ends, pos


def test_roundtrip_keeps_frames_and_times(tmp_path: Path) -> None:
    """Every message reads back with its exact envelope, body, buffers and log time."""
    path = tmp_path / "a.mcap"
    _write(path, 50)
    with BagReader(path) as reader:
        messages = list(reader.messages())
        assert reader.complete and not reader.truncated
    assert len(messages) == 50
    for i, message in enumerate(messages):
        envelope, body, buffers = _frames(i)
        assert (message.envelope_bytes, message.body_bytes, message.buffers) == (
            envelope,
            body,
            buffers,
        )
        assert message.log_time_ns == 1_000 + i
        assert message.frames() == [b"health/heartbeat\0", envelope, body, *buffers]
        assert message.envelope.seq == i + 1
        assert message.body["pid"] == i


def test_message_data_is_plain_messagepack(tmp_path: Path) -> None:
    """Any MessagePack reader sees {envelope, body, buffers} with the body as a map."""
    path = tmp_path / "plain.mcap"
    _write(path, 1)
    with open(path, "rb") as f:
        (_, channel, message), *_ = list(make_reader(f).iter_messages())
    decoded = msgspec.msgpack.decode(message.data)
    assert channel.message_encoding == "msgpack"
    assert decoded["body"]["type"] == "health.heartbeat"
    assert decoded["envelope"][0] == "health.heartbeat"
    assert decoded["buffers"] == [b""]


def test_schema_nests_the_topic_type_json_schema() -> None:
    """The channel schema is JSON Schema with the catalogued body type nested in it."""
    name, data = record_schema(Topic.HEARTBEAT)
    schema = json.loads(data)
    assert name == "vigil.bag.Record[Heartbeat]"
    assert schema["properties"]["body"] == {"$ref": "#/$defs/Heartbeat"}
    assert "Envelope" in schema["$defs"]
    assert set(schema["required"]) == {"envelope", "body", "buffers"}


def test_unknown_topic_gets_an_open_body_schema() -> None:
    """A topic outside the catalogue is recorded with an unconstrained body."""
    _, data = record_schema("custom/thing")
    assert json.loads(data)["properties"]["body"] == {}


def test_finish_is_idempotent_and_closes_the_file_it_opened(tmp_path: Path) -> None:
    """finish() twice is harmless, and adding after it is a BagError."""
    writer = BagWriter(tmp_path / "f.mcap")
    writer.finish()
    writer.finish()
    with pytest.raises(BagError):
        writer.add("x", b"", log_time_ns=0)


def test_writer_leaves_a_caller_stream_open() -> None:
    """A stream handed in by the caller stays open after finish()."""
    stream = io.BytesIO()
    with BagWriter(stream) as writer:
        writer.add_bus_message(Topic.HEARTBEAT, *_frames(0)[:2], log_time_ns=1)
    assert not stream.closed
    assert stream.getvalue().endswith(b"\x89MCAP0\r\n")


def test_every_truncation_yields_the_messages_of_whole_chunks(tmp_path: Path) -> None:
    """Cut at any byte, the bag opens and yields exactly the messages of its whole chunks."""
    full = tmp_path / "full.mcap"
    cuts = _write(full, 120, flush_every=7)
    data = full.read_bytes()
    ends, data_end = _chunk_ends(data)
    assert len(ends) == len(cuts)
    seed = int(os.environ.get("VIGIL_TEST_SEED", "20240607"))
    print(f"truncation seed {seed} (set VIGIL_TEST_SEED to replay)")
    rng = random.Random(seed)
    offsets = {rng.randrange(len(data)) for _ in range(150)}
    offsets |= {e + d for e in ends for d in (-1, 0, 1)} | {0, 1, 7, 8, 9}
    cut = tmp_path / "cut.mcap"
    expected_all = [m.body_bytes for m in read_messages([full])]
    for offset in sorted(o for o in offsets if o < len(data)):
        cut.write_bytes(data[:offset])
        whole = sum(1 for e in ends if e <= offset)
        expected = cuts[whole - 1] if whole else 0
        with BagReader(cut) as reader:
            got = [m.body_bytes for m in reader.messages()]
            # Past the data section only the summary is lost: every message is there.
            assert reader.truncated == (offset < data_end), offset
        assert got == expected_all[:expected], f"offset {offset}"


def test_flushed_chunks_survive_a_writer_that_never_finished(tmp_path: Path) -> None:
    """Without finish() (a crash), every flushed chunk is on disk and readable."""
    path = tmp_path / "crash.mcap"
    stream = open(path, "wb")  # noqa: SIM115 - closed by hand to model a crash mid-recording
    try:
        writer = BagWriter(stream, chunk_size=1 << 30)
        for i in range(10):
            writer.add_bus_message(Topic.HEARTBEAT, *_frames(i)[:2], log_time_ns=i)
        writer.flush()
        for i in range(10, 15):
            writer.add_bus_message(Topic.HEARTBEAT, *_frames(i)[:2], log_time_ns=i)
    finally:
        stream.close()
    with BagReader(path) as reader:
        assert len(list(reader.messages())) == 10
        assert reader.truncated


def test_corrupted_chunk_raises_integrity_error(tmp_path: Path) -> None:
    """A complete chunk whose bytes changed fails its CRC: IntegrityError, not silence."""
    path = tmp_path / "bad.mcap"
    _write(
        path,
        30,
        flush_every=10,
    )
    data = bytearray(path.read_bytes())
    first_end = _chunk_ends(bytes(data))[0][0]
    data[first_end - 20] ^= 0xFF
    path.write_bytes(bytes(data))
    with BagReader(path) as reader, pytest.raises(IntegrityError):
        list(reader.messages())


def test_not_an_mcap_file_is_a_format_error(tmp_path: Path) -> None:
    """A file without the MCAP magic is refused with BagFormatError."""
    path = tmp_path / "no.mcap"
    path.write_bytes(b"hello, world, this is text")
    with pytest.raises(BagFormatError):
        BagReader(path)


def test_foreign_profile_is_a_format_error(tmp_path: Path) -> None:
    """An MCAP file from another tool (profile ros2) is not read as a vigil bag."""
    path = tmp_path / "ros.mcap"
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start(profile="ros2")
        writer.finish()
    with BagReader(path) as reader, pytest.raises(BagFormatError):
        list(reader.messages())


def test_topic_selection_reads_only_those_topics(tmp_path: Path) -> None:
    """messages(topics) yields only the named topics."""
    path = tmp_path / "two.mcap"
    with BagWriter(path) as writer:
        envelope, body, _ = _frames(0)
        writer.add_bus_message(Topic.HEARTBEAT, envelope, body, log_time_ns=1)
        writer.add_bus_message("other/topic", envelope, body, log_time_ns=2)
    assert [m.topic for m in read_messages([path], topics=["other/topic"])] == ["other/topic"]
