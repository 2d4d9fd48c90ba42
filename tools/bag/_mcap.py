"""The bag file format: bus messages in MCAP, written chunk by chunk, readable when cut off.

Each MCAP message holds one bus message as a MessagePack map
`{"envelope": <frame 2>, "body": <frame 3>, "buffers": [<bin>, ...]}` in which the envelope and
body are the recorded frames spliced in byte for byte (each frame is one MessagePack value), so
a replay republishes exactly what was recorded and any MessagePack reader sees plain values.
The topic (frame 1) is the MCAP channel's topic. A bag may instead be written in JSON, the
encoding Foxglove and the mcap tools decode (`_foxglove.py`); readers take both.
`docs/bags.md` describes the layout.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, Self

import lz4.frame  # type: ignore[import-untyped]  # mcap's own dependency; ships no types
import msgspec
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, Chunk, Footer, Header, Message, Metadata, Schema
from mcap.writer import CompressionType, Writer

from vigil.bus.closing import Closing
from vigil.bus.codec import topic_frame
from vigil.bus.envelope import Envelope
from vigil.errors import IntegrityError, VigilError
from vigil.schemas import TOPICS
from vigil.tools.bag._foxglove import (
    DERIVED,
    JSON_ENCODING,
    ImageFormat,
    JsonRecords,
    foxglove_schema,
    record_from_json,
)

__all__ = [
    "MAGIC",
    "MESSAGE_ENCODING",
    "PROFILE",
    "SCHEMA_ENCODING",
    "BagError",
    "BagFormatError",
    "BagMessage",
    "BagReader",
    "BagWriter",
    "Compression",
    "Encoding",
    "encode_record",
    "output_path",
    "read_messages",
    "record_schema",
    "vigil_version",
]

MAGIC: Final = b"\x89MCAP0\r\n"
PROFILE: Final = "vigil"
MESSAGE_ENCODING: Final = "msgpack"
SCHEMA_ENCODING: Final = "jsonschema"
# Bumped when the message layout changes; readers refuse layouts they do not know.
LAYOUT_VERSION: Final = "1"
_RECORD_HEADER = struct.Struct("<BQ")
_MESSAGE_HEADER = struct.Struct("<HIQQ")

Compression = Literal["zstd", "lz4", "none"]
Encoding = Literal["msgpack", "json"]
_COMPRESSION: Final[dict[str, CompressionType]] = {
    "zstd": CompressionType.ZSTD,
    "lz4": CompressionType.LZ4,
    "none": CompressionType.NONE,
}


class BagError(VigilError):
    """A bag cannot be written, read or replayed."""


class BagFormatError(BagError):
    """A file is not a vigil bag (no MCAP magic, a foreign profile or an unknown layout)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def vigil_version() -> str:
    """The installed vigil version (recorded in every bag)."""
    try:
        return version("vigil")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


class _RecordOut(msgspec.Struct):
    envelope: msgspec.Raw
    body: msgspec.Raw
    buffers: list[memoryview | bytes]


class _RecordIn(msgspec.Struct):
    envelope: msgspec.Raw
    body: msgspec.Raw
    buffers: list[bytes] = []


def record_schema(topic: str) -> tuple[str, bytes]:
    """The (name, JSON Schema) of the message wrapper on `topic`.

    The body's schema is the catalogued type's `msgspec.json.schema`; a topic outside the
    catalogue gets an open body. MessagePack `bin` values appear as base64 strings, the way
    JSON Schema spells bytes.
    """
    cls = TOPICS.get(topic)
    types: list[Any] = [Envelope] if cls is None else [Envelope, cls]
    (envelope, *body), defs = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    name = "vigil.bag.Record" if cls is None else f"vigil.bag.Record[{cls.__name__}]"
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": name,
        "description": f"One vigil bus message on `{topic}`: envelope, body and tensor buffers.",
        "type": "object",
        "properties": {
            "envelope": envelope,
            "body": body[0] if body else {},
            "buffers": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
        },
        "required": ["envelope", "body", "buffers"],
        "$defs": defs,
    }
    return name, msgspec.json.encode(schema)


_ENCODER = msgspec.msgpack.Encoder()
_ENVELOPE = msgspec.msgpack.Decoder(Envelope)
_RECORD = msgspec.msgpack.Decoder(_RecordIn)
_ANY = msgspec.msgpack.Decoder()


def encode_record(
    envelope: bytes | memoryview,
    body: bytes | memoryview,
    buffers: Iterable[bytes | memoryview] = (),
) -> bytes:
    """The MCAP message data of one bus message given as its frames 2, 3 and 4..n.

    Frames 2 and 3 must each be one MessagePack value (a received message that decoded is):
    they are spliced in unchanged.
    """
    return _ENCODER.encode(_RecordOut(msgspec.Raw(envelope), msgspec.Raw(body), list(buffers)))


@dataclass(slots=True)
class BagMessage:
    """One recorded bus message: its topic, frames and the times MCAP keeps for it.

    Shaped like `vigil.bus.pubsub.Received` (`topic`, `envelope`, `body`), so the comparison
    engine takes either.
    """

    topic: str
    envelope_bytes: bytes
    body_bytes: bytes
    buffers: list[bytes]
    log_time_ns: int
    publish_time_ns: int
    _envelope: Envelope | None = field(default=None, repr=False)
    _body: Any = field(default=None, repr=False)

    @property
    def envelope(self) -> Envelope:
        """The decoded envelope (decoded on first use)."""
        if self._envelope is None:
            self._envelope = _ENVELOPE.decode(self.envelope_bytes)
        return self._envelope

    @property
    def body(self) -> Any:
        """The body decoded without a schema: builtins, as a tap of an unknown topic sees it."""
        if self._body is None:
            self._body = _ANY.decode(self.body_bytes)
        return self._body

    def frames(self, topic: str | None = None) -> list[bytes]:
        """The bus frames to hand to `Publisher.publish_raw`, optionally on another topic."""
        return [
            topic_frame(self.topic if topic is None else topic),
            self.envelope_bytes,
            self.body_bytes,
            *self.buffers,
        ]


class BagWriter:
    """Writes bus messages to one MCAP file; a context manager with an idempotent `finish()`.

    Chunks are closed by this writer, not by the MCAP library: when a chunk reaches
    `chunk_size` bytes or `flush()` is called, the chunk is compressed, written and the file
    flushed (and fsync'd when asked), so a crash loses at most the chunk in progress.
    `finish()` writes the summary and closes the file only when this writer opened it.

    With `encoding="json"` each record is written as JSON, and requests and results also
    yield Foxglove images (`images`: raw, png or jpeg) and annotations on derived topics.
    """

    def __init__(
        self,
        output: str | os.PathLike[str] | IO[bytes],
        *,
        chunk_size: int = 1 << 20,
        compression: Compression = "zstd",
        fsync: bool = False,
        encoding: Encoding = "msgpack",
        images: ImageFormat = "raw",
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self._stack = ExitStack()
        if isinstance(output, str | os.PathLike):
            self.path = str(output)
            self._stream: IO[bytes] = self._stack.enter_context(open(output, "wb"))  # noqa: SIM115
        else:
            self.path = getattr(output, "name", "<stream>")
            self._stream = output
        self._fsync = fsync and hasattr(self._stream, "fileno")
        self._chunk_size = chunk_size
        # The MCAP writer's own chunk limit is set out of reach: this class decides when a
        # chunk ends, so that every closed chunk also reaches the file.
        self._writer = Writer(
            self._stream,
            chunk_size=1 << 62,
            compression=_COMPRESSION[compression],
        )
        self._writer.start(profile=PROFILE, library=f"vigil/{vigil_version()}")
        self._channels: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self._json = JsonRecords(images) if encoding == JSON_ENCODING else None
        self._encoding = encoding
        self._pending = 0
        self._finished = False
        self.messages = 0
        self.derived = 0
        self.start_ns = 0
        self.end_ns = 0
        self.add_metadata("vigil.layout", {"version": LAYOUT_VERSION, "encoding": encoding})

    def _channel(self, topic: str) -> int:
        channel = self._channels.get(topic)
        if channel is None:
            name, schema = record_schema(topic)
            schema_id = self._writer.register_schema(name, SCHEMA_ENCODING, schema)
            cls = TOPICS.get(topic)
            tag = cls.__struct_config__.tag if cls is not None else None
            meta = {"vigil.schema": tag if isinstance(tag, str) else ""}
            channel = self._writer.register_channel(topic, self._encoding, schema_id, meta)
            self._channels[topic] = channel
        return channel

    def _derived_channel(self, topic: str, cls: type[msgspec.Struct]) -> int:
        channel = self._channels.get(topic)
        if channel is None:
            name, schema = foxglove_schema(cls)
            schema_id = self._schemas.get(name)
            if schema_id is None:
                schema_id = self._writer.register_schema(name, SCHEMA_ENCODING, schema)
                self._schemas[name] = schema_id
            meta = {DERIVED: "foxglove"}
            channel = self._writer.register_channel(topic, JSON_ENCODING, schema_id, meta)
            self._channels[topic] = channel
        return channel

    def add(
        self,
        topic: str,
        data: bytes,
        *,
        log_time_ns: int,
        publish_time_ns: int = 0,
        sequence: int = 0,
    ) -> None:
        """Append one encoded message (see `encode`); closes the chunk when it is full."""
        if self._finished:
            raise BagError(f"{self.path}: bag already finished")
        channel = self._channel(topic)
        if self._json is not None:
            data, derived = self._json.convert(topic, data)
            for extra in derived:
                self._writer.add_message(
                    self._derived_channel(extra.topic, extra.schema),
                    log_time=log_time_ns,
                    data=extra.data,
                    publish_time=publish_time_ns,
                )
                self._pending += len(extra.data) + 31
                self.derived += 1
        self._writer.add_message(
            channel,
            log_time=log_time_ns,
            data=data,
            publish_time=publish_time_ns,
            sequence=sequence & 0xFFFFFFFF,
        )
        if self.messages == 0:
            self.start_ns = log_time_ns
        self.end_ns = max(self.end_ns, log_time_ns)
        self.messages += 1
        self._pending += len(data) + 31
        if self._pending >= self._chunk_size:
            self.flush()

    def add_bus_message(
        self,
        topic: str,
        envelope: bytes | memoryview,
        body: bytes | memoryview,
        buffers: Iterable[bytes | memoryview] = (),
        *,
        log_time_ns: int | None = None,
        publish_time_ns: int = 0,
        sequence: int = 0,
    ) -> None:
        """Encode and append one bus message given as its frames."""
        self.add(
            topic,
            encode_record(envelope, body, buffers),
            log_time_ns=time.time_ns() if log_time_ns is None else log_time_ns,
            publish_time_ns=publish_time_ns,
            sequence=sequence,
        )

    def add_metadata(self, name: str, data: dict[str, str]) -> None:
        """Write a metadata record (between chunks, so it survives a crash once written)."""
        self._writer.add_metadata(name, data)
        self._stream.flush()

    def flush(self) -> None:
        """Close the chunk in progress and push it to the file (and the disk, with fsync)."""
        if self._finished:
            return
        self._writer.flush()  # type: ignore[no-untyped-call]
        if self._fsync:
            os.fsync(self._stream.fileno())
        self._pending = 0

    @property
    def bytes_written(self) -> int:
        """Bytes in the file so far, not counting the chunk in progress."""
        return self._stream.tell()

    @property
    def pending_bytes(self) -> int:
        """Bytes in the chunk in progress (lost on a crash)."""
        return self._pending

    def finish(self) -> None:
        """Write the last chunk, the summary and the footer; close what this writer opened."""
        if self._finished:
            return
        self._finished = True
        try:
            self._writer.finish()  # type: ignore[no-untyped-call]
            self._stream.flush()
            if self._fsync:
                os.fsync(self._stream.fileno())
        finally:
            self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish()


class BagReader(Closing):
    """Reads a bag front to back, tolerating a file cut off by a crash or a power loss.

    Records are read one by one from the data section; a record that runs past the end of
    the file ends the bag there (`truncated` is then True), so every message of every
    complete chunk is yielded. A complete record whose CRC does not match raises
    IntegrityError: that is corruption, not a cut.
    """

    def __init__(self, path: str | os.PathLike[str], *, validate_crcs: bool = True) -> None:
        self.path = str(path)
        self._validate = validate_crcs
        self._stack = ExitStack()
        self._file: IO[bytes] = self._stack.enter_context(open(path, "rb"))  # noqa: SIM115
        self.size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(len(MAGIC))
        if not MAGIC.startswith(head) or (len(head) == len(MAGIC) and head != MAGIC):
            self.close()
            raise BagFormatError(self.path, "not an MCAP file (bad magic)")
        self.header: Header | None = None
        self.truncated = False
        self.complete = False
        self.chunks = 0
        self.compression: set[str] = set()
        self.schemas: dict[int, Schema] = {}
        self.channels: dict[int, Channel] = {}
        self.metadata: list[Metadata] = []

    def _records(self) -> Iterator[Any]:
        """Every top-level record, chunks split into their inner records."""
        self._file.seek(0)
        if self._file.read(len(MAGIC)) != MAGIC:
            self.truncated = True
            return
        while True:
            head = self._file.read(_RECORD_HEADER.size)
            if len(head) < _RECORD_HEADER.size:
                self.truncated = True
                return
            opcode, length = _RECORD_HEADER.unpack(head)
            if length > self.size - self._file.tell():
                self.truncated = True
                return
            body = self._file.read(length)
            stream = ReadDataStream(io.BytesIO(body))
            if opcode == Opcode.CHUNK:
                yield from self._chunk(Chunk.read(stream))
            elif opcode == Opcode.MESSAGE:
                yield Message.read(stream, length)
            elif opcode == Opcode.SCHEMA:
                yield Schema.read(stream)
            elif opcode == Opcode.CHANNEL:
                yield Channel.read(stream)
            elif opcode == Opcode.METADATA:
                yield Metadata.read(stream)
            elif opcode == Opcode.HEADER:
                yield Header.read(stream)
            elif opcode == Opcode.DATA_END:
                self.complete = True
                return
            elif opcode == Opcode.FOOTER:
                yield Footer.read(stream)
                self.complete = True
                return
            # Indexes, attachments and unknown records carry nothing a replay needs.

    def _chunk(self, chunk: Chunk) -> Iterator[Any]:
        """The records of one chunk, parsed one at a time as they are asked for.

        Parsing lazily keeps the cost per message even: a replay never stalls for a whole
        chunk's worth of parsing between two deadlines.
        """
        self.chunks += 1
        self.compression.add(chunk.compression or "none")
        try:
            if chunk.compression == "zstd":
                data = zstandard.decompress(chunk.data, chunk.uncompressed_size)
            elif chunk.compression == "lz4":
                data = bytes(lz4.frame.decompress(chunk.data))
            elif not chunk.compression:
                data = chunk.data
            else:
                raise BagFormatError(self.path, f"unknown compression {chunk.compression!r}")
        except (zstandard.ZstdError, RuntimeError) as exc:
            # lz4 raises RuntimeError on a damaged frame.
            raise IntegrityError(f"{self.path}: chunk", "a readable chunk", str(exc)) from exc
        if self._validate and chunk.uncompressed_crc:
            actual = zlib.crc32(data)
            if actual != chunk.uncompressed_crc:
                raise IntegrityError(
                    f"{self.path}: chunk CRC32", f"{chunk.uncompressed_crc:08x}", f"{actual:08x}"
                )
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if pos + _RECORD_HEADER.size > end:
                raise IntegrityError(f"{self.path}: chunk", "whole records", "a record cut short")
            opcode, length = _RECORD_HEADER.unpack_from(view, pos)
            pos += _RECORD_HEADER.size
            if pos + length > end:
                raise IntegrityError(f"{self.path}: chunk", "whole records", "a record cut short")
            record = view[pos : pos + length]
            pos += length
            if opcode == Opcode.MESSAGE:
                channel_id, sequence, log_time, publish_time = _MESSAGE_HEADER.unpack_from(record)
                yield Message(
                    channel_id=channel_id,
                    log_time=log_time,
                    data=bytes(record[_MESSAGE_HEADER.size :]),
                    publish_time=publish_time,
                    sequence=sequence,
                )
            elif opcode == Opcode.CHANNEL:
                yield Channel.read(ReadDataStream(io.BytesIO(record)))
            elif opcode == Opcode.SCHEMA:
                yield Schema.read(ReadDataStream(io.BytesIO(record)))

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Every bus message on `topics` (all when None), in file order; derived Foxglove
        topics of a JSON bag are not bus messages and are left out."""
        wanted = None if topics is None else set(topics)
        for record in self._records():
            if isinstance(record, Message):
                channel = self.channels.get(record.channel_id)
                if channel is None:
                    raise BagFormatError(
                        self.path, f"message on unknown channel {record.channel_id}"
                    )
                if channel.metadata.get(DERIVED):
                    continue
                if wanted is not None and channel.topic not in wanted:
                    continue
                yield self._message(channel, record)
            else:
                self._note(record)

    def _message(self, channel: Channel, record: Message) -> BagMessage:
        try:
            if channel.message_encoding == MESSAGE_ENCODING:
                wrapper = _RECORD.decode(record.data)
                envelope, body, buffers = (
                    bytes(wrapper.envelope),
                    bytes(wrapper.body),
                    wrapper.buffers,
                )
            elif channel.message_encoding == JSON_ENCODING:
                envelope, body, buffers = record_from_json(channel.topic, record.data)
            else:
                raise BagFormatError(
                    self.path, f"channel {channel.topic!r} is {channel.message_encoding!r}"
                )
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise IntegrityError(
                f"{self.path}: message on {channel.topic}", "a vigil bag record", str(exc)
            ) from exc
        return BagMessage(
            topic=channel.topic,
            envelope_bytes=envelope,
            body_bytes=body,
            buffers=buffers,
            log_time_ns=record.log_time,
            publish_time_ns=record.publish_time,
        )

    def _note(self, record: Any) -> None:
        if isinstance(record, Header):
            self.header = record
            if record.profile != PROFILE:
                raise BagFormatError(self.path, f"profile {record.profile!r} is not a vigil bag")
        elif isinstance(record, Schema):
            self.schemas[record.id] = record
        elif isinstance(record, Channel):
            self.channels[record.id] = record
        elif isinstance(record, Metadata):
            self.metadata.append(record)
            if record.name == "vigil.layout" and record.metadata.get("version") != LAYOUT_VERSION:
                raise BagFormatError(
                    self.path, f"layout {record.metadata.get('version')!r} is unknown"
                )

    def tally(self) -> dict[int, tuple[int, int, int]]:
        """Read the whole file: per channel id, (messages, first log time, last log time).

        Channels, schemas and metadata are collected on the way; payloads are not decoded.
        """
        counts: dict[int, tuple[int, int, int]] = {}
        for record in self._records():
            if isinstance(record, Message):
                n, first, last = counts.get(record.channel_id, (0, record.log_time, 0))
                counts[record.channel_id] = (
                    n + 1,
                    min(first, record.log_time),
                    max(last, record.log_time),
                )
            else:
                self._note(record)
        return counts

    def close(self) -> None:
        """Close the file."""
        self._stack.close()


def read_messages(
    paths: Iterable[str | os.PathLike[str]], topics: Iterable[str] | None = None
) -> Iterator[BagMessage]:
    """Every message of one bag or a split recording, file after file."""
    wanted = None if topics is None else list(topics)
    for path in paths:
        with BagReader(path) as reader:
            yield from reader.messages(wanted)


def output_path(base: str | os.PathLike[str], index: int, *, numbered: bool) -> Path:
    """The path of file `index` of a recording: `base` itself, or `stem_NNNN.mcap` when split."""
    path = Path(base)
    if not numbered:
        return path
    suffix = path.suffix or ".mcap"
    return path.with_name(f"{path.stem}_{index:04d}{suffix}")
