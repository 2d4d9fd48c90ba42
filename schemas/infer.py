"""The request path: inference requests, perception results and their tensor references."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from vigil.schemas._base import Message

__all__ = [
    "MAX_BOXES",
    "MAX_FRAME_BYTES",
    "Box",
    "InferRequest",
    "InferResult",
    "PerceptionOutput",
    "SharedFrame",
    "TensorRef",
]

# The perception output of the deployment guide lives in a 1920x1080 image plane.
MAX_X = 1920.0
MAX_Y = 1080.0
MAX_BOXES = 256
MAX_FRAME_BYTES = 1920 * 1080 * 3

DType = Literal["uint8", "float32", "float16"]
Dim = Annotated[int, msgspec.Meta(ge=1, le=4096)]
StreamId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
ModelName = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")]


class TensorRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where a tensor lives: a raw buffer frame after the body, its dtype and shape."""

    dtype: DType
    shape: Annotated[tuple[Dim, ...], msgspec.Meta(min_length=1, max_length=4)]
    buffer: Annotated[int, msgspec.Meta(ge=0, le=7)] = 0
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


class SharedFrame(msgspec.Struct, frozen=True, kw_only=True):
    """Where a same-host client placed the frame's pixels instead of a buffer frame: a slot
    of its shared-memory pool, and the slot's generation when it was written."""

    pool: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[0-9]{1,10}-[0-9a-f]{32}\.pool$")]
    slot: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    generation: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class InferRequest(Message, kw_only=True, frozen=True, tag="infer.request"):
    """One camera frame to run through the model (image is uint8 HWC, 3 channels); its
    pixels follow as a buffer frame, or lie in shared memory (`shm`)."""

    stream_id: StreamId
    frame_ts_us: Annotated[int, msgspec.Meta(gt=0, le=2**63 - 1)]
    image: TensorRef
    model: ModelName = ""
    shm: SharedFrame | None = None


class Box(msgspec.Struct, frozen=True, kw_only=True):
    """An axis-aligned detection in image-plane pixels."""

    x_min: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_X)]
    y_min: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_Y)]
    x_max: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_X)]
    y_max: Annotated[float, msgspec.Meta(ge=0.0, le=MAX_Y)]
    class_id: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    label: Annotated[str, msgspec.Meta(max_length=32)] = ""
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

    def __post_init__(self) -> None:
        if self.x_max < self.x_min or self.y_max < self.y_min:
            raise ValueError("box corners out of order: expected x_min <= x_max, y_min <= y_max")


class PerceptionOutput(msgspec.Struct, frozen=True, kw_only=True):
    """The perception output of the deployment guide."""

    confidence: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    timestamp_us: Annotated[int, msgspec.Meta(gt=0)]
    boxes: Annotated[list[Box], msgspec.Meta(max_length=MAX_BOXES)]


class InferResult(Message, kw_only=True, frozen=True, tag="infer.result"):
    """A frame's perception output and the provenance an assessor needs."""

    stream_id: StreamId
    frame_ts_us: Annotated[int, msgspec.Meta(gt=0)]
    output: PerceptionOutput
    model: ModelName
    version: Annotated[str, msgspec.Meta(max_length=64)]
    worker: Annotated[str, msgspec.Meta(max_length=64)] = ""
    batch_id: Annotated[int, msgspec.Meta(ge=0)] = 0
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Where the request's time went in the worker (us): in its socket buffer before its loop
    # read it (`socket_us`; across hosts it includes their clock offset), waiting for its batch
    # to form (`queue_us`) and running its batch (`infer_us`, pre- and post-processing
    # included). The ingest places them among its own stamps in the request's evidence.
    queue_us: Annotated[int, msgspec.Meta(ge=0)] = 0
    infer_us: Annotated[int, msgspec.Meta(ge=0)] = 0
    degraded: bool = False
    socket_us: Annotated[int, msgspec.Meta(ge=0)] = 0
    # The intra-op threads its batch ran with (the whole core budget for a lone request).
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
