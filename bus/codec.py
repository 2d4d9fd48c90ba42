"""Frame codec: topic frames, envelopes and typed MessagePack bodies, built once and reused."""

from __future__ import annotations

from typing import Any

import msgspec

from vigil.bus.envelope import Envelope
from vigil.schemas import SCHEMAS, Message

__all__ = ["MAX_TOPIC_LENGTH", "Codec", "parse_topic_frame", "topic_frame"]

MAX_TOPIC_LENGTH = 128


def topic_frame(topic: str) -> bytes:
    """Frame 1: the UTF-8 topic and a NUL, so `infer/res` never matches `infer/result`."""
    if not topic or "\0" in topic or len(topic) > MAX_TOPIC_LENGTH:
        raise ValueError(f"invalid topic name {topic!r}")
    return topic.encode() + b"\0"


def parse_topic_frame(frame: bytes | memoryview) -> str:
    """The topic of frame 1; ValueError when the frame is not a topic frame."""
    raw = bytes(frame)
    if not raw.endswith(b"\0"):
        raise ValueError("topic frame lacks its NUL terminator")
    return raw[:-1].decode()


class Codec:
    """Encoders and decoders for envelopes and every catalogued schema.

    Built once per socket wrapper (msgspec's encoders and decoders are reusable and fastest
    that way); decoding a typed body validates every constraint of its schema in one pass.
    """

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._envelope = msgspec.msgpack.Decoder(Envelope)
        self._bodies = {sid: msgspec.msgpack.Decoder(cls) for sid, cls in SCHEMAS.items()}
        self._any = msgspec.msgpack.Decoder()
        self._skip = msgspec.msgpack.Decoder(msgspec.Raw)

    def encode(self, obj: Envelope | Message) -> bytes:
        """MessagePack bytes of an envelope or a body."""
        return self._encoder.encode(obj)

    def decode_envelope(self, frame: bytes | memoryview) -> Envelope:
        """Decode and validate frame 2; raises msgspec.ValidationError or DecodeError."""
        return self._envelope.decode(frame)

    def decode_body(self, schema: str, frame: bytes | memoryview) -> Message:
        """Decode and validate frame 3 as the schema named in the envelope.

        Raises KeyError for an unknown schema id and msgspec errors for a bad body.
        """
        body: Message = self._bodies[schema].decode(frame)
        return body

    def check_wellformed(self, frame: bytes | memoryview) -> None:
        """Walk a frame's MessagePack without building a value: one pass per byte, nothing
        allocated. Raises msgspec.DecodeError (or RecursionError) when it is malformed."""
        self._skip.decode(frame)

    def decode_any(self, frame: bytes | memoryview) -> Any:
        """Decode MessagePack without a schema (for taps of unknown topics)."""
        return self._any.decode(frame)
