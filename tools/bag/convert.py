"""`vigil bag convert`: rewrite bags in another message encoding (JSON for Foxglove)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import msgspec

from vigil.tools.bag._foxglove import ImageFormat
from vigil.tools.bag._mcap import BagReader, BagWriter, Compression, Encoding, encode_record

__all__ = ["ConvertStats", "convert_bags"]

# Written by every writer itself, for the layout it writes.
_OWN_METADATA = frozenset({"vigil.layout"})


class ConvertStats(msgspec.Struct, frozen=True, kw_only=True):
    """What a conversion wrote."""

    messages: int
    derived: int
    files_read: int


def convert_bags(
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    encoding: Encoding = "json",
    images: ImageFormat = "raw",
    compression: Compression = "zstd",
) -> ConvertStats:
    """Write every bus message of `paths` (one bag or a split recording, either encoding)
    into one bag at `output` in `encoding`, with the recording's metadata; BagError or
    IntegrityError for an input that cannot be read."""
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    with BagWriter(output, compression=compression, encoding=encoding, images=images) as writer:
        for path in paths:
            with BagReader(path) as reader:
                for message in reader.messages():
                    writer.add(
                        message.topic,
                        encode_record(message.envelope_bytes, message.body_bytes, message.buffers),
                        log_time_ns=message.log_time_ns,
                        publish_time_ns=message.publish_time_ns,
                        sequence=message.envelope.seq,
                    )
                for record in reader.metadata:
                    key = (record.name, tuple(sorted(record.metadata.items())))
                    if record.name not in _OWN_METADATA and key not in seen:
                        seen.add(key)
                        writer.add_metadata(record.name, record.metadata)
    return ConvertStats(messages=writer.messages, derived=writer.derived, files_read=len(paths))
