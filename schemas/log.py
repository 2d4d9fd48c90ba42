"""Structured log records that nodes publish for the logger."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["LogRecord"]


class LogRecord(Message, kw_only=True, frozen=True, tag="log.record"):
    """One structured log line, with the trace it belongs to."""

    level: Annotated[str, msgspec.Meta(max_length=16)]
    event: Annotated[str, msgspec.Meta(max_length=256)]
    node: Annotated[str, msgspec.Meta(max_length=64)]
    instance: int = 0
    trace_id: str = ""
    span_id: str = ""
    fields: dict[str, str | int | float | bool | None] = {}
