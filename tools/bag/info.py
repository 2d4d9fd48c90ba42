"""What a bag holds: its topics, counts, times, compression and recorded metadata."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap.records import Metadata

from vigil.tools.bag._mcap import MAGIC, BagReader

__all__ = ["BagInfo", "TopicInfo", "bag_info", "format_info"]


class TopicInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One channel of a bag."""

    topic: str
    schema: str
    message_encoding: str
    messages: int


class BagInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The summary `vigil bag info` prints (and `--json` emits)."""

    path: str
    size_bytes: int
    complete: bool
    library: str
    messages: int
    start_ns: int
    end_ns: int
    chunks: int
    compression: list[str]
    topics: list[TopicInfo]
    metadata: dict[str, dict[str, str]]

    @property
    def duration_s(self) -> float:
        """Seconds from the first message to the last."""
        return (self.end_ns - self.start_ns) / 1e9 if self.messages else 0.0


def bag_info(path: str | os.PathLike[str]) -> BagInfo:
    """Summarise a bag: from its summary section when it has one, else by reading it through.

    A bag cut off by a crash has no summary; it is read up to its last complete chunk and
    reported with `complete=False`.
    """
    info = _from_summary(str(path))
    return info if info is not None else _from_scan(str(path))


def _from_summary(path: str) -> BagInfo | None:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 2 * len(MAGIC):
            return None
        f.seek(-len(MAGIC), os.SEEK_END)
        if f.read() != MAGIC:
            return None
        f.seek(0)
        try:
            reader = SeekingReader(f)
            header = reader.get_header()
            summary = reader.get_summary()
            metadata = list(reader.iter_metadata())
        except (McapError, struct.error, ValueError):
            return None
    if summary is None or summary.statistics is None or header.profile != "vigil":
        return None
    stats = summary.statistics
    topics = [
        TopicInfo(
            topic=channel.topic,
            schema=summary.schemas[channel.schema_id].name
            if channel.schema_id in summary.schemas
            else "",
            message_encoding=channel.message_encoding,
            messages=stats.channel_message_counts.get(cid, 0),
        )
        for cid, channel in sorted(summary.channels.items())
    ]
    return BagInfo(
        path=path,
        size_bytes=size,
        complete=True,
        library=header.library,
        messages=stats.message_count,
        start_ns=stats.message_start_time,
        end_ns=stats.message_end_time,
        chunks=stats.chunk_count,
        compression=sorted({c.compression or "none" for c in summary.chunk_indexes}),
        topics=topics,
        metadata=_merge(metadata),
    )


def _from_scan(path: str) -> BagInfo:
    with BagReader(path) as reader:
        counts = reader.tally()
    topics = [
        TopicInfo(
            topic=channel.topic,
            schema=reader.schemas[channel.schema_id].name
            if channel.schema_id in reader.schemas
            else "",
            message_encoding=channel.message_encoding,
            messages=counts.get(cid, (0, 0, 0))[0],
        )
        for cid, channel in sorted(reader.channels.items())
    ]
    seen = list(counts.values())
    return BagInfo(
        path=path,
        size_bytes=reader.size,
        complete=reader.complete,
        library=reader.header.library if reader.header else "",
        messages=sum(n for n, _, _ in seen),
        start_ns=min((first for _, first, _ in seen), default=0),
        end_ns=max((last for _, _, last in seen), default=0),
        chunks=reader.chunks,
        compression=sorted(reader.compression),
        topics=topics,
        metadata=_merge(reader.metadata),
    )


def _merge(records: Sequence[Metadata]) -> dict[str, dict[str, str]]:
    """Metadata by name; model records are keyed by model so every model shows, latest wins."""
    merged: dict[str, dict[str, str]] = {}
    for record in records:
        name, data = record.name, record.metadata
        if name == "vigil.model":
            name = f"vigil.model/{data.get('name', '')}"
        merged[name] = dict(data)
    return merged


def _stamp(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")


def format_info(info: BagInfo) -> str:
    """The `ros2 bag info`-style text of a bag summary."""
    lines = [
        f"Files:         {info.path}",
        f"Bag size:      {info.size_bytes / 1e6:.3f} MB"
        + ("" if info.complete else "  (incomplete: read up to the last whole chunk)"),
        f"Library:       {info.library}",
        f"Duration:      {info.duration_s:.3f} s",
    ]
    if info.messages:
        lines += [
            f"Start:         {_stamp(info.start_ns)}",
            f"End:           {_stamp(info.end_ns)}",
        ]
    lines += [
        f"Messages:      {info.messages}",
        f"Chunks:        {info.chunks} ({', '.join(info.compression) or 'none'})",
        "Topics:",
    ]
    width = max((len(t.topic) for t in info.topics), default=0)
    lines += [
        f"  {t.topic:<{width}}  {t.messages:>9} msgs  {t.schema} ({t.message_encoding})"
        for t in info.topics
    ]
    host = info.metadata.get("vigil.host", {})
    if host:
        lines.append(
            f"Host:          {host.get('hostname', '')} ({host.get('platform', '')}), "
            f"vigil {host.get('vigil', '')}"
        )
    launch = info.metadata.get("vigil.launch", {})
    if launch:
        lines.append(f"Launch file:   {launch.get('launch_file', '')}")
    models = sorted(k for k in info.metadata if k.startswith("vigil.model/"))
    for key in models:
        model = info.metadata[key]
        lines.append(
            f"Model:         {model.get('name', '')} {model.get('version', '')} "
            f"(sha256 {model.get('sha256', '')[:12]})"
        )
    return "\n".join(lines)
