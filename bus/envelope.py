"""The envelope frame: who sent a message, when, in which trace, and under which schema."""

from __future__ import annotations

import re
import secrets
from typing import Annotated

import msgspec

__all__ = ["Envelope", "TraceContext", "new_span_id", "new_trace_id"]

_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


class Envelope(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Frame 2 of every bus message.

    Encoded as a MessagePack array for compactness; fields are only ever appended, with
    defaults, so an older reader decodes a newer envelope.
    """

    schema: Annotated[str, msgspec.Meta(max_length=64)]
    seq: Annotated[int, msgspec.Meta(ge=0)]
    source: Annotated[str, msgspec.Meta(max_length=64)]
    instance: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    stamp_ns: Annotated[int, msgspec.Meta(ge=0)] = 0
    trace_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    span_id: Annotated[bytes, msgspec.Meta(max_length=8)] = b""
    trace_flags: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0
    deadline_ns: Annotated[int, msgspec.Meta(ge=0)] = 0
    priority: Annotated[int, msgspec.Meta(ge=0, le=7)] = 0
    tenant: Annotated[str, msgspec.Meta(max_length=64)] = ""
    # Random per publisher start: a receiver tells a restarted publisher from a replay.
    session: Annotated[int, msgspec.Meta(ge=0)] = 0


class TraceContext(msgspec.Struct, frozen=True):
    """A W3C trace context (https://www.w3.org/TR/trace-context/)."""

    trace_id: bytes
    span_id: bytes
    flags: int = 1

    @classmethod
    def new(cls) -> TraceContext:
        """A fresh, sampled trace."""
        return cls(new_trace_id(), new_span_id())

    @classmethod
    def parse(cls, traceparent: str) -> TraceContext:
        """Parse a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`); ValueError if bad."""
        if not _TRACEPARENT.fullmatch(traceparent.strip()):
            raise ValueError("traceparent must be 00-<32 hex>-<16 hex>-<2 hex>, lower case")
        parts = traceparent.strip().split("-")
        trace_id, span_id, flags = (bytes.fromhex(p) for p in parts[1:])
        if len(trace_id) != 16 or len(span_id) != 8 or len(flags) != 1:
            raise ValueError("traceparent ids have the wrong length")
        if trace_id == bytes(16) or span_id == bytes(8):
            raise ValueError("traceparent ids must not be all zero")
        return cls(trace_id, span_id, flags[0])

    def child(self) -> TraceContext:
        """The context of a new span in the same trace."""
        return TraceContext(self.trace_id, new_span_id(), self.flags)

    @property
    def traceparent(self) -> str:
        """The `traceparent` header of this context."""
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{self.flags:02x}"


def new_trace_id() -> bytes:
    """16 random bytes (all-zero has probability 2**-128)."""
    return secrets.token_bytes(16)


def new_span_id() -> bytes:
    """8 random bytes."""
    return secrets.token_bytes(8)
