"""The envelope frame: who sent a message, when, in which trace, and under which schema."""

from __future__ import annotations

import re
import secrets
from typing import Annotated

import msgspec

__all__ = ["Envelope", "TraceContext", "new_span_id", "new_trace_id"]

_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# All-zero ids are invalid in W3C trace context.
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)


class Envelope(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Frame 2 of every bus message.

    Encoded as a MessagePack array for compactness; fields are only ever appended, with
    defaults, so an older reader decodes a newer envelope (it ignores the trailing fields it
    does not know). A field may be renamed: the wire knows positions, not names.
    """

    schema: Annotated[str, msgspec.Meta(max_length=64)]
    seq: Annotated[int, msgspec.Meta(ge=0)]
    source: Annotated[str, msgspec.Meta(max_length=64)]
    instance: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    stamp_ns: Annotated[int, msgspec.Meta(ge=0)] = 0
    trace_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    span_id: Annotated[bytes, msgspec.Meta(max_length=8)] = b""
    trace_flags: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0
    # The sender's wall clock (0: none); a receiver converts it once into a `Deadline`.
    deadline_wall_ns: Annotated[int, msgspec.Meta(ge=0)] = 0
    priority: Annotated[int, msgspec.Meta(ge=0, le=7)] = 0
    tenant: Annotated[str, msgspec.Meta(max_length=64)] = ""
    # Random per publisher start: a receiver tells a restarted publisher from a replay.
    session: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Non-zero on a message that `vigil bag play` published again: the id of that replay.
    # Live nodes leave such messages out of their state (a replay is not evidence of now).
    replay: Annotated[int, msgspec.Meta(ge=0)] = 0
    # A request's client-unique id (the client's session and sequence number), the same on
    # every hop and every re-send: ingests and workers de-duplicate by it.
    request_id: Annotated[bytes, msgspec.Meta(max_length=16)] = b""
    # Set by the ingest on a dispatch of a peer beyond its fair share (admission.md): the
    # worker runs it at background CPU priority, behind every peer within its share.
    background: bool = False

    @classmethod
    def build(
        cls,
        *,
        schema: str,
        seq: int,
        source: str,
        instance: int = 0,
        stamp_ns: int = 0,
        trace: TraceContext | None = None,
        deadline_wall_ns: int = 0,
        priority: int = 0,
        tenant: str = "",
        session: int = 0,
        replay: int = 0,
        request_id: bytes = b"",
        background: bool = False,
    ) -> Envelope:
        """An envelope carrying `trace` in its flattened wire fields (what senders use)."""
        return cls(
            schema=schema,
            seq=seq,
            source=source,
            instance=instance,
            stamp_ns=stamp_ns,
            trace_id=trace.trace_id if trace else b"",
            span_id=trace.span_id if trace else b"",
            trace_flags=trace.flags if trace else 0,
            deadline_wall_ns=deadline_wall_ns,
            priority=priority,
            tenant=tenant,
            session=session,
            replay=replay,
            request_id=request_id,
            background=background,
        )

    def with_trace(self, trace: TraceContext | None) -> Envelope:
        """This envelope in `trace` (None clears the trace fields)."""
        return msgspec.structs.replace(
            self,
            trace_id=trace.trace_id if trace else b"",
            span_id=trace.span_id if trace else b"",
            trace_flags=trace.flags if trace else 0,
        )

    @property
    def trace(self) -> TraceContext | None:
        """The sender's trace context; None when absent or malformed (wrong length, all zero)."""
        if len(self.trace_id) != 16 or len(self.span_id) != 8:
            return None
        if self.trace_id == _ZERO_TRACE_ID or self.span_id == _ZERO_SPAN_ID:
            return None
        return TraceContext(self.trace_id, self.span_id, self.trace_flags)

    @property
    def budget_ns(self) -> int | None:
        """The time the sender gave the message, by its own clock: its deadline less its stamp.

        A difference of one clock's readings, so the offset between two hosts' clocks cancels.
        None when the envelope carries no deadline.
        """
        return self.deadline_wall_ns - self.stamp_ns if self.deadline_wall_ns else None


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
        if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
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
