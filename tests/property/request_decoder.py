"""The request decoder as a fuzz target: frames in, a request or a typed refusal out.

One input is a list of frames, written as a count byte and then each frame as a 4-byte
big-endian length and its bytes (the last frame takes whatever is left). `decode_request`
runs what the ingest runs on a client message: the size check, the envelope and body decode,
the request rules, and the mapping of a decode fault onto its diagnostic code. Anything but a
request, a FrameFault or a Rejection is a bug, and so is a refusal without a proper code.

`tests/property/fuzz_request_decoder.py` drives it with atheris (coverage-guided) and grows
the corpus in `corpus/request_decoder/`; `test_request_decoder_corpus.py` replays the corpus
in every test run.
"""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import zmq

from vigil.bus.channel import Channel, FrameFault
from vigil.nodes.ingest._validate import Limits, Rejection, RequestValidator, rejection_from_fault
from vigil.schemas import DiagCode, ErrorCode, InferRequest

CORPUS = Path(__file__).parent / "corpus" / "request_decoder"
LIMITS = Limits(max_message_bytes=1 << 20, max_height=64, max_width=64)
_LENGTH = struct.Struct(">I")


def frames_of(data: bytes) -> list[bytes]:
    """The frames an input stands for."""
    if not data:
        return []
    count, rest, frames = data[0] % 8, data[1:], []
    for _ in range(count):
        if len(rest) < _LENGTH.size:
            break
        (length,) = _LENGTH.unpack_from(rest)
        frames.append(rest[_LENGTH.size : _LENGTH.size + length])
        rest = rest[_LENGTH.size + length :]
    if rest:
        frames.append(rest)
    return frames


def input_of(frames: list[bytes]) -> bytes:
    """The input that stands for `frames` (a corpus file)."""
    return bytes([len(frames)]) + b"".join(_LENGTH.pack(len(f)) + f for f in frames)


class Decoder:
    """The ingest's decode path on one channel, built once (as the ingest builds it)."""

    def __init__(self) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._socket = self._ctx.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._channel = Channel(self._socket, source="fuzz", routed=True)
        self._validator = RequestValidator(LIMITS)

    def close(self) -> None:
        """Close the channel's socket and its context."""
        self._socket.close()
        self._ctx.term()

    def decode_request(self, data: bytes) -> InferRequest | Rejection:
        """Decode one input as the ingest would: a request, or its typed refusal."""
        frames = [zmq.Frame(b"peer"), *(zmq.Frame(f) for f in frames_of(data))]
        try:
            self._validator.check_size(frames[1:])
            incoming = self._channel.decode(frames)
            return self._validator.check(incoming, owner=("fuzz", b"peer"))
        except FrameFault as fault:
            rejection = rejection_from_fault(fault)
        except Rejection as refused:
            rejection = refused
        assert isinstance(rejection.diag, DiagCode), rejection.diag
        assert isinstance(rejection.code, ErrorCode), rejection.code
        assert rejection.field.startswith("$") or not rejection.field, rejection.field
        return rejection


def check(decoder: Decoder, data: bytes) -> None:
    """One input: typed outcome, and a decoded request survives a round trip."""
    outcome = decoder.decode_request(data)
    if isinstance(outcome, InferRequest):
        encoded = msgspec.msgpack.encode(outcome)
        assert msgspec.msgpack.decode(encoded, type=InferRequest) == outcome


def seeds() -> dict[str, list[bytes]]:
    """The hand-made start of the corpus: a valid request and one of each kind of breakage."""
    enc = msgspec.msgpack.encode
    envelope = ["infer.request", 7, "seed", 0, 1, bytes(range(1, 17)), bytes(range(1, 9)), 1]
    body = {
        "type": "infer.request",
        "stream_id": "cam-1",
        "frame_ts_us": 10,
        "image": {"dtype": "uint8", "shape": [2, 2, 3]},
    }
    pixels = bytes(12)
    nested = b"\x91" * 50_000 + b"\xc0"

    def with_body(**fields: object) -> list[bytes]:
        return [enc(envelope), enc({**body, **fields}), pixels]

    bomb = b"\x81\xa9stream_id\xdd" + (60_000).to_bytes(4, "big") + b"\x90" * 60_000
    return {
        "valid": [enc(envelope), enc(body), pixels],
        "no-frames": [],
        "envelope-only": [enc(envelope)],
        "envelope-garbage": [b"\xc1", enc(body), pixels],
        "envelope-truncated": [enc(envelope)[:-3], enc(body), pixels],
        "envelope-map": [enc({"schema": "infer.request"}), enc(body), pixels],
        "envelope-bad-seq": [enc(["infer.request", -1, "s"]), enc(body), pixels],
        "envelope-nested": [enc(envelope)[:-1] + nested, enc(body), pixels],
        "unknown-schema": [enc(["no.such", 1, "s"]), enc(body), pixels],
        "body-garbage": [enc(envelope), b"\xc1", pixels],
        "body-truncated": [enc(envelope), enc(body)[:-4], pixels],
        "body-bomb": [enc(envelope), bomb],
        "body-bomb-truncated": [enc(envelope), bomb[:-1]],
        "body-nested": [enc(envelope), b"\x82\xa4type\xadinfer.request\xa1z" + nested],
        "body-other-tag": [enc(envelope), enc({**body, "type": "control.credit"}), pixels],
        "stream-empty": with_body(stream_id=""),
        "stream-pattern": with_body(stream_id="a b/c"),
        "ts-zero": with_body(frame_ts_us=0),
        "ts-max": with_body(frame_ts_us=2**63 - 1),
        "ts-huge": with_body(frame_ts_us=2**64 - 1),
        "dtype-float": with_body(image={"dtype": "float32", "shape": [2, 2, 3]}),
        "shape-2d": with_body(image={"dtype": "uint8", "shape": [2, 6]}),
        "shape-channels": with_body(image={"dtype": "uint8", "shape": [2, 2, 4]}),
        "shape-too-big": with_body(image={"dtype": "uint8", "shape": [4096, 4096, 3]}),
        "buffer-index": with_body(image={"dtype": "uint8", "shape": [2, 2, 3], "buffer": 3}),
        "buffer-offset": with_body(image={"dtype": "uint8", "shape": [2, 2, 3], "offset": 99}),
        "buffer-short": [enc(envelope), enc(body), pixels[:5]],
        "buffer-two": [enc(envelope), enc(body), pixels, pixels],
        "buffer-none": [enc(envelope), enc(body)],
        "model-pattern": with_body(model="../etc"),
        "unknown-field": with_body(extra=[1, 2, {"x": None}]),
    }
