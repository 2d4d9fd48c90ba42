"""JSON bags: what the official mcap reader decodes, with Foxglove images and detections."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from mcap.reader import make_reader
from PIL import Image

from vigil.bus.codec import Codec
from vigil.bus.envelope import Envelope
from vigil.schemas import (
    Box,
    DiagnosticEvent,
    InferRequest,
    InferResult,
    PerceptionOutput,
    TensorRef,
    Topic,
)
from vigil.tools.bag import BagReader, BagWriter, bag_info
from vigil.tools.bag._foxglove import foxglove_schema
from vigil.tools.cli import cli

CODEC = Codec()
HEIGHT, WIDTH = 6, 8
FRAME = np.arange(HEIGHT * WIDTH * 3, dtype=np.uint8).reshape(HEIGHT, WIDTH, 3)


def _envelope(schema: str, seq: int) -> bytes:
    return CODEC.encode(Envelope(schema=schema, seq=seq, source="t", trace_id=bytes(range(16))))


def _source_bag(path: Path) -> None:
    """A MessagePack bag with a frame, its result (two boxes), a diagnostic, and a request
    whose body breaks its schema (a bag keeps invalid messages too)."""
    request = InferRequest(
        stream_id="cam0",
        frame_ts_us=1_700_000_000_123_456,
        image=TensorRef(dtype="uint8", shape=(HEIGHT, WIDTH, 3)),
    )
    boxes = [
        Box(x_min=1.0, y_min=1.0, x_max=4.0, y_max=3.0, score=0.9, label="sign"),
        Box(x_min=5.0, y_min=2.0, x_max=7.0, y_max=5.0, score=0.5, class_id=3),
    ]
    result = InferResult(
        stream_id="cam0",
        frame_ts_us=request.frame_ts_us,
        output=PerceptionOutput(confidence=0.9, timestamp_us=1, boxes=boxes),
        model="det",
        version="2",
        worker="worker.1",
        batch_id=1,
        batch_size=1,
        queue_us=1,
        infer_us=1,
    )
    diag = DiagnosticEvent(code="DIA-2047", severity="ERROR", node="ingest", message="x")
    invalid = CODEC.encode({"type": "infer.request", "stream_id": "bad stream!"})
    with BagWriter(path) as writer:
        writer.add_bus_message(
            Topic.INFER_REQUEST,
            _envelope("infer.request", 1),
            CODEC.encode(request),
            [FRAME.tobytes()],
            log_time_ns=10,
        )
        writer.add_bus_message(
            Topic.INFER_RESULT, _envelope("infer.result", 1), CODEC.encode(result), log_time_ns=20
        )
        writer.add_bus_message(
            Topic.DIAGNOSTIC, _envelope("diag.event", 1), CODEC.encode(diag), log_time_ns=30
        )
        writer.add_bus_message(
            Topic.INFER_REQUEST, _envelope("infer.request", 2), invalid, log_time_ns=40
        )


def _convert(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    source, out = tmp_path / "in.mcap", tmp_path / "out.mcap"
    _source_bag(source)
    result = CliRunner().invoke(cli, ["bag", "convert", str(source), str(out), *extra])
    assert result.exit_code == 0, result.output
    return source, out


def _decoded(path: Path) -> dict[str, list[tuple[str, dict[str, object]]]]:
    """Every message as the official mcap reader gives it, parsed as JSON and validated
    against its channel's JSON Schema: topic -> [(schema name, message)]. The one recorded
    request whose body breaks its schema is the only one allowed to fail validation."""
    by_topic: dict[str, list[tuple[str, dict[str, object]]]] = {}
    invalid = []
    with path.open("rb") as f:
        for schema, channel, message in make_reader(f).iter_messages():
            assert channel.message_encoding == "json"
            assert schema is not None and schema.encoding == "jsonschema"
            decoded = json.loads(message.data)
            if not jsonschema.Draft202012Validator(json.loads(schema.data)).is_valid(decoded):
                invalid.append(decoded)
            by_topic.setdefault(channel.topic, []).append((schema.name, decoded))
    assert [m["body"] for m in invalid] == [{"type": "infer.request", "stream_id": "bad stream!"}]
    return by_topic


def test_every_message_decodes_as_json_and_validates(tmp_path: Path) -> None:
    """The official mcap reader yields every message of a converted bag as JSON that
    validates against its channel's schema, bus messages and derived topics alike."""
    _, out = _convert(tmp_path)
    decoded = _decoded(out)
    assert sorted(decoded) == [
        "diag/event",
        "foxglove/cam0/detections",
        "foxglove/cam0/image",
        "infer/request",
        "infer/result",
    ]
    assert len(decoded["infer/request"]) == 2
    ((_, diag),) = decoded["diag/event"]
    assert diag["body"]["code"] == "DIA-2047"
    # The envelope is the MessagePack array in JSON; its bytes are base64.
    assert base64.b64decode(diag["envelope"][5]) == bytes(range(16))


def test_frames_become_foxglove_raw_images(tmp_path: Path) -> None:
    """A request's frame is a foxglove.RawImage (rgb8) named after its stream, stamped with
    the frame's time, its pixels base64 as Foxglove expects."""
    _, out = _convert(tmp_path)
    ((name, image),) = _decoded(out)["foxglove/cam0/image"]
    assert name == "foxglove.RawImage"
    assert image["timestamp"] == {"sec": 1_700_000_000, "nsec": 123_456_000}
    assert (image["width"], image["height"], image["step"]) == (WIDTH, HEIGHT, WIDTH * 3)
    assert (image["encoding"], image["frame_id"]) == ("rgb8", "cam0")
    assert base64.b64decode(str(image["data"])) == FRAME.tobytes()


def test_detections_become_foxglove_image_annotations(tmp_path: Path) -> None:
    """A result's boxes are closed outlines with a label each, at the frame's timestamp."""
    _, out = _convert(tmp_path)
    ((name, notes),) = _decoded(out)["foxglove/cam0/detections"]
    assert name == "foxglove.ImageAnnotations"
    outlines, texts = notes["points"], notes["texts"]
    assert isinstance(outlines, list) and isinstance(texts, list)
    assert [o["type"] for o in outlines] == [2, 2]  # LINE_LOOP
    assert outlines[0]["points"] == [
        {"x": 1.0, "y": 1.0},
        {"x": 4.0, "y": 1.0},
        {"x": 4.0, "y": 3.0},
        {"x": 1.0, "y": 3.0},
    ]
    assert [t["text"] for t in texts] == ["sign 0.90", "3 0.50"]
    assert {o["timestamp"]["nsec"] for o in outlines} == {123_456_000}


def test_png_images_are_compressed_images(tmp_path: Path) -> None:
    """With --images png a frame is a foxglove.CompressedImage whose PNG holds its pixels."""
    _, out = _convert(tmp_path, "--images", "png")
    ((name, image),) = _decoded(out)["foxglove/cam0/image"]
    assert (name, image["format"]) == ("foxglove.CompressedImage", "png")
    png = Image.open(io.BytesIO(base64.b64decode(str(image["data"]))))
    assert np.array_equal(np.asarray(png), FRAME)


def test_json_bag_reads_back_as_the_same_bus_frames(tmp_path: Path) -> None:
    """Read by vigil, a JSON bag gives back the recorded frames byte for byte (derived topics
    left out); the invalid body comes back with its values; converting back to MessagePack
    gives the original bag's frames."""
    source, out = _convert(tmp_path)
    with BagReader(source) as a, BagReader(out) as b:
        original, converted = list(a.messages()), list(b.messages())
    assert [m.topic for m in converted] == [m.topic for m in original]
    for x, y in zip(original, converted, strict=True):
        assert (x.envelope_bytes, x.buffers, x.log_time_ns) == (
            y.envelope_bytes,
            y.buffers,
            y.log_time_ns,
        )
        assert x.body == y.body
    # Valid bodies re-encode exactly (and this invalid one, which holds no bytes, too).
    assert [x.body_bytes == y.body_bytes for x, y in zip(original, converted, strict=True)] == [
        True,
        True,
        True,
        True,
    ]
    back = tmp_path / "back.mcap"
    done = CliRunner().invoke(cli, ["bag", "convert", str(out), str(back), "--encoding", "msgpack"])
    assert done.exit_code == 0, done.output
    with BagReader(back) as c:
        assert [m.frames() for m in c.messages()] == [m.frames() for m in original]


def test_bag_info_reads_a_json_bag(tmp_path: Path) -> None:
    """`bag info` lists a JSON bag's bus and derived topics with their encoding."""
    _, out = _convert(tmp_path)
    info = bag_info(out)
    encodings = {t.topic: (t.schema, t.message_encoding) for t in info.topics}
    assert encodings["foxglove/cam0/image"] == ("foxglove.RawImage", "json")
    assert encodings["infer/result"][1] == "json"
    assert info.metadata["vigil.layout"]["encoding"] == "json"


@pytest.mark.parametrize(
    ("cls_name", "fields"),
    [
        ("RawImage", {"timestamp", "frame_id", "width", "height", "encoding", "step", "data"}),
        ("CompressedImage", {"timestamp", "frame_id", "data", "format"}),
        ("ImageAnnotations", {"circles", "points", "texts"}),
    ],
)
def test_schemas_spell_foxglove_well_known_schemas(cls_name: str, fields: set[str]) -> None:
    """Each derived schema carries Foxglove's name and fields, self-contained (no $ref), with
    bytes as base64 strings and times as sec/nsec."""
    from vigil.tools.bag import _foxglove  # noqa: PLC0415 - the Structs by name

    name, raw = foxglove_schema(getattr(_foxglove, cls_name))
    schema = json.loads(raw)
    assert name == schema["title"] == f"foxglove.{cls_name}"
    assert set(schema["properties"]) == fields
    assert "$ref" not in raw.decode()
    if "data" in fields:
        assert schema["properties"]["data"] == {"type": "string", "contentEncoding": "base64"}
    if "timestamp" in fields:
        assert set(schema["properties"]["timestamp"]["properties"]) == {"sec", "nsec"}
