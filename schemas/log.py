"""Structured log records that nodes publish for the logger, and the logger's checkpoints."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["LogCheckpoint", "LogRecord"]


class LogRecord(Message, kw_only=True, frozen=True, tag="log.record"):
    """One structured log line, with the trace it belongs to."""

    level: Annotated[str, msgspec.Meta(max_length=16)]
    event: Annotated[str, msgspec.Meta(max_length=256)]
    node: Annotated[str, msgspec.Meta(max_length=64)]
    instance: int = 0
    trace_id: str = ""
    span_id: str = ""
    fields: dict[str, str | int | float | bool | None] = {}


class LogCheckpoint(Message, kw_only=True, frozen=True, tag="log.checkpoint"):
    """The newest signed checkpoint of one of the logger's sealed stores.

    A recorder that keeps these can later prove a store copy cut short or rolled back:
    `vigil log verify --key PUB --checkpoint FILE` with `note` saved as FILE. `note` is the
    C2SP signed note (`docs/log-store.md`); the other fields repeat what it says.
    """

    store: Annotated[str, msgspec.Meta(max_length=64)]
    store_id: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")]
    size: Annotated[int, msgspec.Meta(ge=0)]
    start: Annotated[int, msgspec.Meta(ge=0)]
    note: Annotated[str, msgspec.Meta(max_length=1024)]
