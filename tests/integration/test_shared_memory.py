"""Frames through shared memory: results, slots returned on every path, refusals."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from vigil.bus.rundir import RunDir
from vigil.bus.shm import pool_dir
from vigil.client import Client, Reply
from vigil.errors import DeadlineExceeded, InvalidArgument, Unavailable
from vigil.launch import Launcher, load
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.worker import FAULT_ABORT_STREAM
from vigil.schemas import DiagCode, ErrorCode, InferRequest, InferResult, SharedFrame, TensorRef
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import signed_pair
from vigil.testing.pipeline import classifier_serving

FRAMES = [np.full((32, 32, 3), v, dtype=np.uint8) for v in (10, 120, 250)]
WAIT_S = 60.0


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """The small classifier behind two fault-injectable workers and an ingest."""
    folder = Path(tmp_path_factory.mktemp("shm", numbered=True))
    short = Path("/tmp") / f"vg-shm-{folder.name}"
    short.mkdir()
    try:
        root, trusted, _ = signed_pair(short)
        launch = launch_file(
            "shm",
            *classifier_serving(root, trusted, workers=2, fault_injection=True),
            node("ingest", IngestConfig(default_deadline_ms=30_000, worker_silence_ms=5000)),
        )
        run = RunDir(short / "run")
        with Launcher(load(write(launch, short), run.path), run) as launcher:
            launcher.start()
            yield launcher
    finally:
        subprocess.run(["rm", "-rf", str(short)], check=False)


def _reply(client: Client, seq: int) -> InferResult | Exception:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        reply: Reply | None = client.poll(1000)
        if reply is not None and reply[0] == seq:
            return reply[1]
    raise AssertionError(f"no reply to request {seq}")


def _shared(client: Client, frame: np.ndarray, stream: str, ts: int, **kw: object) -> int:
    """Submit through the pool, and check that it went there (a slot is lent)."""
    free = client.slots.pool.free if client.slots.pool is not None else None
    seq = client.submit(frame, stream_id=stream, frame_ts_us=ts, **kw)  # type: ignore[arg-type]
    assert client.slots.pool is not None
    if free is not None:
        assert client.slots.pool.free == free - 1
    return seq


def test_shared_frames_give_the_buffer_path_results(pipeline: Launcher) -> None:
    """A frame placed in shared memory is answered exactly as the same frame sent as a buffer,
    and its slot is free again once the result is in."""
    endpoint = pipeline.run.ipc("ingest")
    with Client(endpoint, pool_slots=2) as shared, Client(endpoint, shared_memory=False) as plain:
        for i, frame in enumerate(FRAMES):
            a = _reply(shared, _shared(shared, frame, "cam-shm", 100 + i, deadline_s=30))
            b = _reply(plain, plain.submit(frame, stream_id="cam-buf", frame_ts_us=100 + i))
            assert isinstance(a, InferResult) and isinstance(b, InferResult)
            assert a.output.boxes[0].class_id == b.output.boxes[0].class_id
            assert a.output.confidence == pytest.approx(b.output.confidence)
            assert shared.slots.pool is not None and shared.slots.pool.free == 2
        assert plain.slots.pool is None  # that one never made a pool


def test_slot_comes_back_after_a_refusal(pipeline: Launcher) -> None:
    """A request the ingest refuses (a timestamp that does not increase) frees its slot."""
    with Client(pipeline.run.ipc("ingest"), pool_slots=1) as client:
        assert isinstance(_reply(client, _shared(client, FRAMES[0], "cam-r", 50)), InferResult)
        outcome = _reply(client, _shared(client, FRAMES[1], "cam-r", 50))
        assert isinstance(outcome, InvalidArgument)
        assert client.slots.pool is not None and client.slots.pool.free == 1


def test_slot_comes_back_after_a_deadline(pipeline: Launcher) -> None:
    """A request whose deadline passed frees its slot with the DEADLINE_EXCEEDED answer."""
    with Client(pipeline.run.ipc("ingest"), pool_slots=1) as client:
        # Connected first: a request that cannot even leave before its deadline ends locally.
        assert isinstance(_reply(client, _shared(client, FRAMES[0], "cam-d", 1)), InferResult)
        outcome = _reply(client, _shared(client, FRAMES[1], "cam-d", 2, deadline_s=1e-6))
        assert isinstance(outcome, DeadlineExceeded)
        assert client.slots.pool is not None and client.slots.pool.free == 1


def test_forged_descriptors_are_refused(pipeline: Launcher) -> None:
    """A descriptor naming another client's pool is refused (ownership), and so are a stale
    generation, a slot outside the pool and a pool that does not exist."""
    endpoint = pipeline.run.ipc("ingest")
    with Client(endpoint, pool_slots=2) as owner, Client(endpoint, name="other") as other:
        assert isinstance(_reply(owner, _shared(owner, FRAMES[0], "cam-o", 1)), InferResult)
        pool = owner.slots.pool
        assert pool is not None
        real = SharedFrame(pool=pool.name, slot=0, generation=1)

        def forged(client: Client, ref: SharedFrame, ts: int) -> InvalidArgument:
            request = InferRequest(
                stream_id="cam-forged",
                frame_ts_us=ts,
                image=TensorRef(dtype="uint8", shape=(32, 32, 3)),
                shm=ref,
            )
            env = client.channel.envelope(request, deadline_wall_ns=time.time_ns() + 10**10)
            client.send_frames([client.channel.encode(env), msgspec.msgpack.encode(request)])
            outcome = _reply(client, env.seq)
            assert isinstance(outcome, InvalidArgument), outcome
            return outcome

        stolen = forged(other, real, 1)
        assert (stolen.reply.field, stolen.reply.diag_code) == ("$.shm.pool", DiagCode.AUTH_REFUSED)
        stale = forged(owner, msgspec.structs.replace(real, generation=9), 2)
        assert stale.reply.field == "$.shm.generation"
        outside = forged(owner, msgspec.structs.replace(real, slot=7), 3)
        assert outside.reply.field == "$.shm.slot"
        missing = forged(owner, msgspec.structs.replace(real, pool=f"1-{'0' * 32}.pool"), 4)
        assert missing.reply.field == "$.shm.pool"
        codes = {r.reply.code for r in (stale, outside, missing)}
        assert codes == {ErrorCode.INVALID_ARGUMENT}
        # The owner's pool still serves it after the refusals.
        assert isinstance(_reply(owner, _shared(owner, FRAMES[1], "cam-o", 5)), InferResult)


def test_pool_serves_its_client_on_a_new_connection(pipeline: Launcher) -> None:
    """The pool belongs to the client, not to one connection: a request of the same client
    (its session) arriving on a new connection, as after a link dropped and came back, is
    served from the pool."""
    endpoint = pipeline.run.ipc("ingest")
    with Client(endpoint, pool_slots=2) as client:
        first = _reply(client, _shared(client, FRAMES[0], "cam-re", 1, deadline_s=30))
        assert isinstance(first, InferResult), first
        placed = client.slots.place(FRAMES[0])
        assert placed is not None
        slot, shared = placed
        request = InferRequest(
            stream_id="cam-re",
            frame_ts_us=2,
            image=TensorRef(dtype="uint8", shape=(32, 32, 3)),
            shm=shared,
        )
        seq = client.channel.next_seq()
        session = client.channel.session.to_bytes(8, "big")
        envelope = client.channel.envelope(
            request,
            seq=seq,
            deadline_wall_ns=time.time_ns() + 30 * 10**9,
            request_id=session + seq.to_bytes(8, "big"),
        )
        with pipeline.ctx.socket(zmq.DEALER) as link:
            link.setsockopt(zmq.LINGER, 0)
            link.connect(endpoint)
            link.send_multipart([client.channel.encode(envelope), client.channel.encode(request)])
            assert link.poll(int(WAIT_S * 1000)), "no answer on the new connection"
            answer = client.channel.decode(link.recv_multipart(copy=False)).body
        assert isinstance(answer, InferResult), answer
        assert answer.output.boxes[0].class_id == first.output.boxes[0].class_id
        assert client.slots.pool is not None
        client.slots.pool.release(slot)


def test_slot_comes_back_when_its_workers_die(pipeline: Launcher) -> None:
    """A frame that crashes every worker it reaches ends UNAVAILABLE, and its slot is free."""
    with Client(pipeline.run.ipc("ingest"), pool_slots=1) as client:
        seq = _shared(client, FRAMES[0], FAULT_ABORT_STREAM, 1, deadline_s=30)
        outcome = _reply(client, seq)
        assert isinstance(outcome, Unavailable)
        assert client.slots.pool is not None and client.slots.pool.free == 1


_DYING_CLIENT = """
import sys, numpy as np
from vigil.client import Client
client = Client(sys.argv[1])
seq = client.submit(np.zeros((32, 32, 3), np.uint8), stream_id="dying", frame_ts_us=1)
client.poll(30000)
print(client.slots.pool.name, flush=True)
sys.stdin.read()  # until killed
"""


def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_pool_of_a_dead_client_is_removed(pipeline: Launcher) -> None:
    """When a client process dies, the ingest removes its pool (and every slot in it)."""
    with subprocess.Popen(
        [sys.executable, "-c", _DYING_CLIENT, pipeline.run.ipc("ingest")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as child:
        assert child.stdout is not None
        name = child.stdout.readline().decode().strip()
        path = pool_dir(pipeline.run.path) / name
        assert path.exists()
        child.kill()
    assert _wait_for(lambda: not path.exists(), WAIT_S)
