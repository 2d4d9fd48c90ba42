"""Typed error codes on the wire and the error reply that carries them."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["ErrorCode", "ErrorReply"]


class ErrorCode(enum.StrEnum):
    """Every way a request can end other than with a result (gRPC status names)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
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
