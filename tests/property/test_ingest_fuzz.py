"""A running ingest answers 100,000 hostile messages with typed errors and stays up.

Hypothesis draws message templates (hostile values in every envelope and body field,
MessagePack length bombs and deep nesting, wrong frame counts, oversized frames); a seeded
generator expands them into at least 100,000 messages (truncated, bit-flipped, re-framed),
sent over one DEALER with a window of requests in flight. The seed is printed; set
VIGIL_FUZZ_SEED to replay a run.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from vigil.bus.envelope import Envelope, TraceContext, new_span_id, new_trace_id
from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, RestartPolicy, load
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.loader import LoaderConfig, PinnedModel
from vigil.nodes.worker import EngineConfig, Task, WorkerConfig
from vigil.schemas import SCHEMAS, ErrorCode, ErrorReply, InferResult, RepliesDropped
from vigil.testing.launchfiles import launch_file, node, write

pytestmark = pytest.mark.verifies("SR-ING-001", "SR-ING-003")

MESSAGES = 100_000
WINDOW = 500
TEMPLATES = 400
MAX_MESSAGE_BYTES = 64 * 1024
MAX_FRAME_BYTES = 2 * MAX_MESSAGE_BYTES  # the ingest's ZMQ_MAXMSGSIZE (`max_frame_bytes`)
FRAME_LIMIT = 32  # the ingest's max height and width in this graph
# The longest any single reply may keep the window waiting (a hang, not a slow machine).
STALL_S = 20.0
RSS_GROWTH_LIMIT = 100 * 1024 * 1024

_REQUEST = "infer.request"
_ENCODE = msgspec.msgpack.Encoder().encode
_REPLY = msgspec.msgpack.Decoder(ErrorReply | InferResult | RepliesDropped)


# -- the graph under test --------------------------------------------------------------------


def _tiny_classifier(path: Path) -> str:
    """A 1x1 convolution and global pooling: any frame size, four logits; returns sha256."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["g"]),
            helper.make_node("Flatten", ["g"], ["logits"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def ingest_under_fuzz(short_tmp: Path) -> Iterator[tuple[Launcher, int]]:
    """Loader, one worker and an ingest with small limits; yields the launcher and ingest pid.

    The ingest may not be restarted: a crash must show as a dead process, not a new one.
    The worker starts before the loader so that its subscription to the latched model topic
    is in place when the loader announces (with no subscriber, the announcement is dropped).
    """
    model = short_tmp / "tiny.onnx"
    digest = _tiny_classifier(model)
    worker = WorkerConfig(
        max_batch=8,
        max_queue_delay_us=500,
        warm_height=8,
        warm_width=8,
        engine=EngineConfig(task=Task.CLASSIFICATION, intra_op_threads=1, pad_to=1),
    )
    pinned = PinnedModel(name="tiny", version="1", path=str(model), sha256=digest)
    ingest = IngestConfig(
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_height=FRAME_LIMIT,
        max_width=FRAME_LIMIT,
        max_queue=1024,
        default_deadline_ms=1000,
        max_deadline_ms=2000,
        publish_requests=False,
    )
    launch = launch_file(
        "fuzz",
        node("worker", worker),
        node("loader", LoaderConfig(pinned=pinned)),
        node("ingest", ingest, required=True, restart=RestartPolicy(max_restarts=0)),
    )
    path = write(launch, short_tmp)
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        (ingest,) = [c for c in launcher.children if c.plan.spec.kind == "ingest"]
        yield launcher, ingest.pid


# -- templates (Hypothesis) -----------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 1, 7, 8, 255, 256, 65535, 65536, 4096, 4097, 2**31, 2**63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["", "uint8", "float32", "int64", "../../etc/passwd", "a" * 65, "\x00"]),
    st.binary(max_size=80),
)


def _containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)


_values = st.recursive(_scalars, _containers, max_leaves=16)
_bomb_heads = [0xDC, 0xDD, 0xDE, 0xDF, 0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9]


@st.composite
def _bombs(draw: st.DrawFn) -> bytes:
    """MessagePack that claims far more than it holds, or nests far deeper than any schema."""
    if draw(st.booleans()):
        head = draw(st.sampled_from(_bomb_heads))
        width = {0xDC: 2, 0xDE: 2, 0xD9: 1, 0xDA: 2, 0xC4: 1, 0xC5: 2, 0xC7: 1, 0xC8: 2}.get(
            head, 4
        )
        length = draw(st.integers(min_value=0, max_value=256**width - 1))
        raw = bytes([head]) + length.to_bytes(width, "big")
        if head in (0xC7, 0xC8, 0xC9):
            raw += b"\x01"  # the ext type byte
        return raw + draw(st.binary(max_size=16))
    depth = draw(st.sampled_from([64, 999, 1001, 5000, 100_000]))
    layer = draw(st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01", b"\x92\xc0"]))
    return layer * depth + b"\xc0"


def _valid_envelope_items() -> list[Any]:
    now = time.time_ns()
    return [_REQUEST, 1, "fuzz", 0, now, new_trace_id(), new_span_id(), 1, now + 2 * 10**9, 0, ""]


def _valid_body(h: int, w: int) -> dict[str, Any]:
    return {
        "type": _REQUEST,
        "stream_id": "fuzz",
        "frame_ts_us": 1,
        "image": {"dtype": "uint8", "shape": [h, w, 3], "buffer": 0, "offset": 0},
        "model": "",
    }


@dataclass(frozen=True)
class Template:
    """A message skeleton: envelope and body frames plus tensor buffers, all raw bytes."""

    frames: tuple[bytes, ...]
    # A template that may be valid gets fresh per-stream timestamps when expanded.
    request_like: bool = False


@st.composite
def _templates(draw: st.DrawFn) -> Template:
    kind = draw(
        st.sampled_from(
            ["envelope", "body", "image", "bomb", "frames", "schema", "oversize", "valid"]
        )
    )
    h = draw(st.integers(min_value=1, max_value=FRAME_LIMIT))
    w = draw(st.integers(min_value=1, max_value=FRAME_LIMIT))
    env = _valid_envelope_items()
    body: Any = _valid_body(h, w)
    buffers = [bytes(h * w * 3)]
    if kind == "envelope":
        action = draw(st.sampled_from(["replace", "truncate", "extend", "whole"]))
        if action == "replace":
            env[draw(st.integers(min_value=0, max_value=len(env) - 1))] = draw(_values)
        elif action == "truncate":
            env = env[: draw(st.integers(min_value=0, max_value=2))]
        elif action == "extend":
            env.extend(draw(st.lists(_values, min_size=1, max_size=4)))
        else:
            env = draw(_values)
    elif kind == "body":
        key = draw(st.sampled_from([*body, "extra"]))
        if draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(_values)
    elif kind == "image":
        key = draw(st.sampled_from(["dtype", "shape", "buffer", "offset", "extra"]))
        body["image"][key] = draw(
            _values
            | st.lists(st.integers(min_value=-1, max_value=5000), max_size=6)
            | st.integers(min_value=-(2**63), max_value=2**63 - 1)
        )
    elif kind == "schema":
        env[0] = draw(st.sampled_from([*SCHEMAS, "", "infer.request ", "x" * 65]))
        body = draw(st.dictionaries(st.text(max_size=12), _values, max_size=6))
    elif kind == "oversize":
        buffers = [bytes(MAX_MESSAGE_BYTES + draw(st.integers(min_value=1, max_value=4096)))]
    if kind == "bomb":
        where = draw(st.sampled_from(["envelope", "body", "buffer", "inside"]))
        bomb = draw(_bombs())
        env_raw, body_raw = _ENCODE(env), _ENCODE(body)
        if where == "envelope":
            env_raw = bomb
        elif where == "body":
            body_raw = bomb
        elif where == "buffer":
            buffers = [bomb]
        else:
            # A valid array header whose first element is the bomb.
            env_raw = b"\x9b" + bomb + env_raw[1:]
        frames = (env_raw, body_raw, *buffers)
    else:
        frames = (_ENCODE(env), _ENCODE(body), *buffers)
    if kind == "frames":
        frames = tuple(draw(st.lists(st.binary(max_size=64), min_size=1, max_size=12)))
    return Template(frames, request_like=kind in ("valid", "image", "body"))


def _draw_templates(fuzz_seed: int) -> list[Template]:
    found: list[Template] = []

    @seed(fuzz_seed)
    @settings(
        max_examples=TEMPLATES,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_templates())
    def collect(template: Template) -> None:
        found.append(template)

    collect()
    return found


# -- expansion (seeded) ---------------------------------------------------------------------


class _Expander:
    """Turns templates into a stream of mutated multipart messages, reproducibly."""

    def __init__(self, templates: list[Template], rng: random.Random) -> None:
        self.templates = templates
        self.rng = rng
        self.ts = 0

    def _fresh(self, template: Template) -> list[bytes]:
        frames = list(template.frames)
        if template.request_like and len(frames) >= 2:
            # Keep the per-stream timestamp rule from rejecting every copy of the template.
            self.ts += 1
            try:
                body = msgspec.msgpack.decode(frames[1])
            except msgspec.DecodeError:
                return frames
            if isinstance(body, dict) and body.get("frame_ts_us") == 1:
                body["frame_ts_us"] = self.ts
                frames[1] = _ENCODE(body)
            now = time.time_ns()
            env = msgspec.msgpack.decode(frames[0])
            if isinstance(env, list) and len(env) > 8 and env[8] == env[4] + 2 * 10**9:
                env[4], env[8] = now, now + 2 * 10**9
                frames[0] = _ENCODE(env)
        return frames

    def message(self) -> list[bytes]:
        rng = self.rng
        frames = self._fresh(rng.choice(self.templates))
        mutation = rng.randrange(10)
        index = rng.randrange(len(frames))
        if mutation == 0 and frames[index]:
            frames[index] = frames[index][: rng.randrange(len(frames[index]))]
        elif mutation == 1 and frames[index]:
            raw = bytearray(frames[index])
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            frames[index] = bytes(raw)
        elif mutation == 2 and len(frames) > 1:
            del frames[index]
        elif mutation == 3:
            frames.extend(rng.randbytes(rng.randrange(32)) for _ in range(rng.randint(1, 8)))
        elif mutation == 4 and frames[index]:
            # Overwrite a MessagePack length prefix somewhere inside the frame.
            raw = bytearray(frames[index])
            at = rng.randrange(len(raw))
            raw[at : at + 5] = b"\xdd" + struct.pack(">I", rng.randrange(2**32))
            frames[index] = bytes(raw)
        # Mutations 5-9 leave the template as drawn.
        # A frame over the socket's own limit (twice the message limit) ends its connection,
        # and with it the replies in flight (the hostile suite covers that): cut here to the
        # largest frame that is received and refused with a typed error.
        return [frame[:MAX_FRAME_BYTES] for frame in frames]


# -- the run --------------------------------------------------------------------------------


def _valid_request(ts: int) -> list[bytes]:
    now = time.time_ns()
    env = Envelope.build(
        schema=_REQUEST,
        seq=ts,
        source="fuzz",
        stamp_ns=now,
        trace=TraceContext.new(),
        deadline_wall_ns=now + 10 * 10**9,
    )
    body = _valid_body(8, 8) | {"stream_id": "final", "frame_ts_us": ts}
    return [_ENCODE(env), _ENCODE(body), bytes(8 * 8 * 3)]


def test_ingest_survives_hostile_messages(ingest_under_fuzz: tuple[Launcher, int]) -> None:
    """100,000 hostile messages: every one answered, ingest alive and bounded, still serving."""
    launcher, pid = ingest_under_fuzz
    fuzz_seed = int(os.environ.get("VIGIL_FUZZ_SEED", random.randrange(2**32)))
    print(f"VIGIL_FUZZ_SEED={fuzz_seed}")
    expander = _Expander(_draw_templates(fuzz_seed), random.Random(fuzz_seed))
    ingest = psutil.Process(pid)
    outcomes: Counter[str] = Counter()
    sent = answered = 0
    rss_start = 0
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVHWM, 0)
        dealer.setsockopt(zmq.SNDHWM, 0)
        dealer.connect(launcher.run.ipc("ingest"))

        def drain(until_in_flight: int) -> None:
            nonlocal answered
            while sent - answered > until_in_flight:
                assert dealer.poll(int(STALL_S * 1000)), (
                    f"no reply in {STALL_S} s with {sent - answered} of {sent} unanswered "
                    f"(seed {fuzz_seed}); ingest log ends:\n{_log_tail(launcher)}"
                )
                while True:
                    try:
                        frames = dealer.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    outcome, count = _classify(frames)
                    answered += count
                    outcomes[outcome] += count

        while sent < MESSAGES:
            dealer.send_multipart(expander.message(), copy=False)
            sent += 1
            if sent - answered >= WINDOW:
                drain(WINDOW // 2)
            if sent == 5000:
                drain(0)
                rss_start = ingest.memory_info().rss
        drain(0)
        assert ingest.is_running() and ingest.status() != psutil.STATUS_ZOMBIE
        rss_growth = ingest.memory_info().rss - rss_start

        # Still serving: a valid request after the storm comes back with its result.
        dealer.send_multipart(_valid_request(10**9))
        assert dealer.poll(20_000), "no answer to a valid request after the fuzz run"
        final = _REPLY.decode(dealer.recv_multipart()[1])
        # Nothing more arrives than was sent: every message was answered exactly once.
        extra = dealer.poll(100)

    print(f"sent {sent}, answered {answered}, rss growth {rss_growth / 2**20:.1f} MiB")
    print(dict(outcomes.most_common()))
    assert answered == sent
    assert not extra
    assert outcomes["untyped"] == 0
    assert isinstance(final, InferResult), final
    assert rss_growth < RSS_GROWTH_LIMIT
    assert launcher.children[-1].popen is not None
    assert all(c.popen is not None and c.popen.poll() is None for c in launcher.children)


def _log_tail(launcher: Launcher) -> str:
    """The end of the ingest's log, which names whatever stopped it."""
    log = launcher.run.path / "logs" / "ingest.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def _classify(frames: list[bytes]) -> tuple[str, int]:
    """The reply's outcome (an error code, `result`, `dropped`, or `untyped` for anything
    else) and how many requests it answers: a notice of replies the ingest had no room for
    while this client did not read answers each of them."""
    if len(frames) < 2:
        return "untyped", 1
    try:
        body = _REPLY.decode(frames[1])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "untyped", 1
    if isinstance(body, InferResult):
        return "result", 1
    if isinstance(body, RepliesDropped):
        return "dropped", body.count
    return str(ErrorCode(body.code)), 1
