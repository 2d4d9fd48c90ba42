"""JSON bags: bus messages as JSON records, with pictures and boxes in Foxglove's schemas.

A JSON bag keeps every recorded bus message on its own topic, as the JSON spelling of the
same record a MessagePack bag holds (`{"envelope": [...], "body": {...}, "buffers": [...]}`,
bytes as base64 strings, the way JSON Schema and Foxglove spell them), so `bag play`, `bag
check` and `bag info` read it like a MessagePack bag. Beside them it writes derived topics in
Foxglove's well-known schemas, so Foxglove and `mcap cat --json` open the recording with
pictures and boxes:

* `foxglove/<stream>/image`: each `infer/request` frame as `foxglove.RawImage` (`rgb8`), or
  `foxglove.CompressedImage` (PNG or JPEG) when asked;
* `foxglove/<stream>/detections`: each `infer/result` as `foxglove.ImageAnnotations`, a closed
  outline and a label per box, stamped with the frame's timestamp so that the image panel
  pairs them with their picture.

The Structs below spell those schemas field for field (names, types, units as Foxglove
publishes them in its `schemas/jsonschema` definitions); their JSON Schema is generated from
the Structs, with every `$ref` inlined, titled with Foxglove's schema name.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import numpy as np
from PIL import Image

from vigil.bus.envelope import Envelope
from vigil.schemas import TOPICS, InferRequest, InferResult, Topic

__all__ = [
    "DERIVED",
    "JSON_ENCODING",
    "Derived",
    "ImageFormat",
    "JsonRecords",
    "detections",
    "foxglove_schema",
    "record_from_json",
]

JSON_ENCODING: Final = "json"
# Channel metadata key marking a derived (Foxglove) channel: readers of bus messages skip it.
DERIVED: Final = "vigil.derived"
ImageFormat = Literal["raw", "png", "jpeg"]


class Time(msgspec.Struct, frozen=True, kw_only=True):
    """Foxglove's `time`: seconds and nanoseconds."""

    sec: Annotated[int, msgspec.Meta(ge=0)]
    nsec: Annotated[int, msgspec.Meta(ge=0, le=999_999_999)]

    @classmethod
    def from_us(cls, us: int) -> Time:
        """A time from microseconds (a frame's `frame_ts_us`)."""
        return cls(sec=us // 1_000_000, nsec=(us % 1_000_000) * 1000)


class RawImage(msgspec.Struct, frozen=True, kw_only=True):
    """foxglove.RawImage: a raw image."""

    timestamp: Time
    frame_id: str
    width: int
    height: int
    encoding: str
    step: int
    data: bytes


class CompressedImage(msgspec.Struct, frozen=True, kw_only=True):
    """foxglove.CompressedImage: a compressed image."""

    timestamp: Time
    frame_id: str
    data: bytes
    format: str


class Point2(msgspec.Struct, frozen=True, kw_only=True):
    """foxglove.Point2: a position in 2D image coordinates (pixels)."""

    x: float
    y: float


class Color(msgspec.Struct, frozen=True, kw_only=True):
    """foxglove.Color: RGBA, each between 0 and 1."""

    r: float
    g: float
    b: float
    a: float


class PointsAnnotationType(enum.IntEnum):
    """foxglove.PointsAnnotationType."""

    UNKNOWN = 0
    POINTS = 1
    LINE_LOOP = 2
    LINE_STRIP = 3
    LINE_LIST = 4


class CircleAnnotation(msgspec.Struct, frozen=True, kw_only=True):
    """foxglove.CircleAnnotation: a circle on a 2D image."""

    timestamp: Time
    position: Point2
    diameter: float
    thickness: float
    fill_color: Color
    outline_color: Color


class PointsAnnotation(msgspec.Struct, frozen=True, kw_only=True):
    """foxglove.PointsAnnotation: points, lines or a polygon on a 2D image."""

    timestamp: Time
    type: PointsAnnotationType
    points: list[Point2]
    outline_color: Color
    outline_colors: list[Color]
    fill_color: Color
    thickness: float


class TextAnnotation(msgspec.Struct, frozen=True, kw_only=True):
    """foxglove.TextAnnotation: a text label on a 2D image."""

    timestamp: Time
    position: Point2
    text: str
    font_size: float
    text_color: Color
    background_color: Color


class ImageAnnotations(msgspec.Struct, frozen=True, kw_only=True):
    """foxglove.ImageAnnotations: annotations for a 2D image."""

    circles: list[CircleAnnotation]
    points: list[PointsAnnotation]
    texts: list[TextAnnotation]


_NAMES: Final[dict[type[msgspec.Struct], str]] = {
    RawImage: "foxglove.RawImage",
    CompressedImage: "foxglove.CompressedImage",
    ImageAnnotations: "foxglove.ImageAnnotations",
}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with every `#/$defs/...` reference replaced by the definition itself."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def foxglove_schema(cls: type[msgspec.Struct]) -> tuple[str, bytes]:
    """(Foxglove's schema name, its JSON Schema) of one of the Structs above."""
    schema = msgspec.json.schema(cls)
    defs = schema.pop("$defs", {})
    body = _inline(schema, defs)
    name = _NAMES[cls]
    body["title"] = name
    return name, msgspec.json.encode(body)


@dataclass(frozen=True, slots=True)
class Derived:
    """One message of a derived Foxglove topic."""

    topic: str
    schema: type[msgspec.Struct]
    data: bytes


class _Wire(msgspec.Struct):
    envelope: msgspec.Raw
    body: msgspec.Raw
    buffers: list[bytes] = []


class _JsonRecord(msgspec.Struct):
    envelope: Any
    body: Any
    buffers: list[bytes]


_WIRE = msgspec.msgpack.Decoder(_Wire)
_ANY = msgspec.msgpack.Decoder()
_REQUEST = msgspec.msgpack.Decoder(InferRequest)
_RESULT = msgspec.msgpack.Decoder(InferResult)
_JSON = msgspec.json.Encoder()
_BOX = Color(r=1.0, g=0.2, b=0.1, a=1.0)
_CLEAR = Color(r=0.0, g=0.0, b=0.0, a=0.0)
_LABEL_BG = Color(r=0.0, g=0.0, b=0.0, a=0.6)
_WHITE = Color(r=1.0, g=1.0, b=1.0, a=1.0)


class JsonRecords:
    """Turns MessagePack bag records into JSON records and their derived Foxglove messages."""

    def __init__(self, images: ImageFormat = "raw") -> None:
        self.images = images

    def convert(self, topic: str, data: bytes) -> tuple[bytes, list[Derived]]:
        """The JSON record of one MessagePack record, and what it derives."""
        wire = _WIRE.decode(data)
        record = _JsonRecord(
            envelope=_ANY.decode(wire.envelope), body=_ANY.decode(wire.body), buffers=wire.buffers
        )
        return _JSON.encode(record), list(self._derive(topic, wire))

    def _derive(self, topic: str, wire: _Wire) -> Iterator[Derived]:
        try:
            if topic == Topic.INFER_REQUEST:
                request = _REQUEST.decode(wire.body)
                image = self._image(request, wire.buffers)
                if image is not None:
                    yield Derived(
                        f"foxglove/{request.stream_id}/image", type(image), image_data(image)
                    )
            elif topic == Topic.INFER_RESULT:
                result = _RESULT.decode(wire.body)
                yield Derived(
                    f"foxglove/{result.stream_id}/detections",
                    ImageAnnotations,
                    _JSON.encode(detections(result)),
                )
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # an invalid message is recorded as it came; it has no picture

    def _image(
        self, request: InferRequest, buffers: list[bytes]
    ) -> RawImage | CompressedImage | None:
        ref = request.image
        if ref.dtype != "uint8" or len(ref.shape) != 3 or ref.shape[2] != 3:
            return None
        if ref.buffer >= len(buffers):
            return None
        height, width, _ = ref.shape
        size = height * width * 3
        raw = buffers[ref.buffer][ref.offset : ref.offset + size]
        if len(raw) != size:
            return None
        stamp = Time.from_us(request.frame_ts_us)
        if self.images == "raw":
            return RawImage(
                timestamp=stamp,
                frame_id=request.stream_id,
                width=width,
                height=height,
                encoding="rgb8",
                step=width * 3,
                data=raw,
            )
        pixels = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
        out = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(out, format=self.images.upper())
        return CompressedImage(
            timestamp=stamp, frame_id=request.stream_id, data=out.getvalue(), format=self.images
        )


def image_data(image: RawImage | CompressedImage) -> bytes:
    """The JSON message of an image (bytes as base64)."""
    return _JSON.encode(image)


def detections(result: InferResult) -> ImageAnnotations:
    """A result's boxes as outlines with labels, stamped with its frame's time."""
    stamp = Time.from_us(result.frame_ts_us)
    outlines = []
    texts = []
    for box in result.output.boxes:
        corners = [
            Point2(x=box.x_min, y=box.y_min),
            Point2(x=box.x_max, y=box.y_min),
            Point2(x=box.x_max, y=box.y_max),
            Point2(x=box.x_min, y=box.y_max),
        ]
        outlines.append(
            PointsAnnotation(
                timestamp=stamp,
                type=PointsAnnotationType.LINE_LOOP,
                points=corners,
                outline_color=_BOX,
                outline_colors=[],
                fill_color=_CLEAR,
                thickness=2.0,
            )
        )
        texts.append(
            TextAnnotation(
                timestamp=stamp,
                position=Point2(x=box.x_min, y=max(box.y_min - 2.0, 0.0)),
                text=f"{box.label or box.class_id} {box.score:.2f}",
                font_size=12.0,
                text_color=_WHITE,
                background_color=_LABEL_BG,
            )
        )
    return ImageAnnotations(circles=[], points=outlines, texts=texts)


_JSON_IN = msgspec.json.Decoder(_Wire)
_JSON_ENVELOPE = msgspec.json.Decoder(Envelope)
_JSON_ANY = msgspec.json.Decoder()
_MSGPACK = msgspec.msgpack.Encoder()
_TYPED = {topic: msgspec.json.Decoder(cls) for topic, cls in TOPICS.items()}


def record_from_json(topic: str, data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """The MessagePack frames (envelope, body, buffers) of one JSON record.

    A message of a catalogued topic that decodes as its type is encoded back exactly as vigil
    encodes it, so it replays byte for byte; any other body (a recorded invalid message) is
    carried over as plain values. msgspec.DecodeError or ValidationError when the record
    itself is malformed.
    """
    record = _JSON_IN.decode(data)
    envelope = _MSGPACK.encode(_JSON_ENVELOPE.decode(record.envelope))
    typed = _TYPED.get(topic)
    body = None
    if typed is not None:
        try:
            body = _MSGPACK.encode(typed.decode(record.body))
        except (msgspec.DecodeError, msgspec.ValidationError):
            body = None
    if body is None:
        body = _MSGPACK.encode(_JSON_ANY.decode(record.body))
    return envelope, body, record.buffers
