"""Typed error codes on the wire and the error reply that carries them."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["ErrorCode", "ErrorReply", "RepliesDropped"]


class ErrorCode(enum.StrEnum):
    """Every way a request can end other than with a result (gRPC status names)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


class ErrorReply(Message, kw_only=True, frozen=True, tag="error.reply"):
    """The typed answer to a request that could not produce a result."""

    code: ErrorCode
    message: Annotated[str, msgspec.Meta(max_length=512)]
    field: Annotated[str, msgspec.Meta(max_length=128)] = ""
    rule: Annotated[str, msgspec.Meta(max_length=128)] = ""
    retry_after_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    diag_code: str = ""
    stream_id: str = ""
    frame_ts_us: int = 0


class RepliesDropped(Message, kw_only=True, frozen=True, tag="error.replies_dropped"):
    """Replies the ingest dropped because their client did not read: sent when it reads again.

    `seqs` are the request ids whose answers were dropped (the most recent, when there were
    more than fit); `count` is how many were dropped in all.
    """

    count: Annotated[int, msgspec.Meta(ge=1)]
    seqs: Annotated[list[int], msgspec.Meta(max_length=1024)] = []
    diag_code: str = ""
