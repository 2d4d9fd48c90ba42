"""Bus benchmark: small-message publish->receive rate and round-trip latency, vigil vs raw pyzmq;
and large frames from a client to a worker through the ingest, vs memcpy.

Both sides run in separate processes over ipc in a temporary directory, measured in the same
run: raw pyzmq PUB/SUB with a bytes payload, and vigil's typed Publisher/Subscriber (envelope,
per-topic sequence numbers, typed decode and validation, gap counting), directly and through
the bus proxy.

Large frames (1920x1080x3, 6.2 MB) travel the request path: a real client, the real ingest
process (validation, admission, dispatch), and a worker process that reads every byte of
each frame where it lies (a checksum pass) and answers; a few requests in flight. Once through
shared memory (the client copies the frame into its pool's slot, the worker reads it in place)
and once as buffer frames over the sockets; beside them, memcpy of the same frames in this
process, the same run, and the client's copy alone (`pool_put_gb_s`: the same frames put into
the slots of a pool in this process, nothing else running): what the pipeline costs beyond
the one copy it cannot avoid.

Prints a table; `--json PATH` writes vigil_msgs_s, raw_msgs_s, vigil_rtt_us, raw_rtt_us
(p50/p99), large_frame_gb_s (shared memory), large_frame_buffer_gb_s, memcpy_gb_s and
pool_put_gb_s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing as mp
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import zmq

from vigil.bus.channel import Channel
from vigil.bus.proxy import Proxy
from vigil.bus.pubsub import Publisher, Subscriber
from vigil.bus.rundir import RunDir
from vigil.bus.shm import FramePool, SharedFrames, pool_dir
from vigil.client import Client
from vigil.launch import Launcher, load
from vigil.nodes.ingest import IngestConfig
from vigil.schemas import (
    ErrorCode,
    ErrorReply,
    Heartbeat,
    InferRequest,
    InferResult,
    PerceptionOutput,
    WorkerCredit,
)
from vigil.testing.launchfiles import launch_file, node, write

TOPIC = "bench/small"
PAYLOAD = b"x" * 64


def _small() -> Heartbeat:
    return Heartbeat(node="bench", instance=0, pid=1, period_ms=100, kind="bench")


# -- rate ------------------------------------------------------------------------------------


def _raw_receiver(endpoint: str, count: int, out: Any, ready: Any, started: Any) -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub:
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC.encode() + b"\0")
        sub.connect(endpoint)
        ready.set()
        sub.recv_multipart()  # the warm-up message
        started.set()
        start = time.perf_counter()
        got = 0
        while got < count:
            if not sub.poll(2000):
                break
            sub.recv_multipart()
            got += 1
        out.put((got, time.perf_counter() - start))


def _vigil_receiver(endpoint: str, count: int, out: Any, ready: Any, started: Any) -> None:
    with zmq.Context() as ctx, Subscriber(ctx, endpoint, [TOPIC], hwm=0) as sub:
        ready.set()
        while sub.recv(2000) is None:
            pass
        started.set()
        start = time.perf_counter()
        got = 0
        while got < count:
            if sub.recv(2000) is not None:
                got += 1
            elif not sub.socket.poll(0):
                break
        out.put((got, time.perf_counter() - start))


def _rate(kind: str, endpoint_pub: str, endpoint_sub: str, count: int) -> float:
    ctx_mp = mp.get_context("spawn")
    out, ready, started = ctx_mp.Queue(), ctx_mp.Event(), ctx_mp.Event()
    target = _raw_receiver if kind == "raw" else _vigil_receiver
    proc = ctx_mp.Process(target=target, args=(endpoint_sub, count, out, ready, started))
    proc.start()
    ready.wait()
    with zmq.Context() as ctx:
        if kind == "raw":
            sock = ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.LINGER, -1)
            sock.connect(endpoint_pub) if endpoint_pub != endpoint_sub else sock.bind(endpoint_pub)
            frame = TOPIC.encode() + b"\0"
            _until_received(lambda: sock.send_multipart([frame, PAYLOAD]), started)
            for _ in range(count):
                sock.send_multipart([frame, PAYLOAD])
            got, seconds = out.get()
            sock.close()
        else:
            bind = endpoint_pub == endpoint_sub
            with Publisher(ctx, endpoint_pub, source="bench", hwm=0, bind=bind) as pub:
                pub.socket.setsockopt(zmq.LINGER, -1)
                body = _small()
                _until_received(lambda: pub.publish(TOPIC, body), started)
                for _ in range(count):
                    pub.publish(TOPIC, body)
                got, seconds = out.get()
    proc.join()
    if got < count:
        print(f"  ({kind}: {count - got} of {count} not received)")
    return got / seconds


def _until_received(send: Callable[[], Any], started: Any) -> None:
    """Publish warm-up messages until the receiver has one (the slow-joiner trap); the
    receiver starts its clock there and counts only what follows."""
    while True:
        send()
        if started.wait(0.02):
            return


# -- round trip ------------------------------------------------------------------------------


def _raw_echo(ping: str, pong: str, n: int) -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub, ctx.socket(zmq.PUB) as pub:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(ping)
        pub.bind(pong)
        for _ in range(n):
            if not sub.poll(5000):
                return
            pub.send_multipart(sub.recv_multipart())


def _vigil_echo(ping: str, pong: str, n: int) -> None:
    with (
        zmq.Context() as ctx,
        Subscriber(ctx, ping, [TOPIC]) as sub,
        Publisher(ctx, pong, source="echo", bind=True) as pub,
    ):
        for _ in range(n):
            got = sub.recv(5000)
            if got is None:
                return
            pub.publish(TOPIC + "/pong", got.body)


def _rtt(kind: str, tmp: Path, n: int) -> list[float]:
    ping, pong = f"ipc://{tmp}/{kind}-ping", f"ipc://{tmp}/{kind}-pong"
    ctx_mp = mp.get_context("spawn")
    warm = 200
    proc = ctx_mp.Process(
        target=_raw_echo if kind == "raw" else _vigil_echo, args=(ping, pong, n + warm + 1000)
    )
    samples: list[float] = []
    with zmq.Context() as ctx:
        if kind == "raw":
            pub = ctx.socket(zmq.PUB)
            pub.bind(ping)
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            proc.start()
            sub.connect(pong)
            frame = TOPIC.encode() + b"\0"

            def once() -> bool:
                pub.send_multipart([frame, PAYLOAD])
                if not sub.poll(50):
                    return False
                sub.recv_multipart()
                return True
        else:
            vpub = Publisher(ctx, ping, source="bench", bind=True)
            proc.start()
            vsub = Subscriber(ctx, pong, [TOPIC + "/pong"])
            body = _small()

            def once() -> bool:
                vpub.publish(TOPIC, body)
                return vsub.recv(50) is not None

        while not once():  # both subscriptions have propagated once a round trip succeeds
            pass
        for i in range(n + warm):
            t0 = time.perf_counter()
            if not once():
                continue
            if i >= warm:
                samples.append((time.perf_counter() - t0) * 1e6)
        if kind == "raw":
            pub.close(linger=0)
            sub.close(linger=0)
        else:
            vpub.close()
            vsub.close()
    proc.kill()
    proc.join()
    return samples


# -- large frames ----------------------------------------------------------------------------

LARGE = (1080, 1920, 3)
IN_FLIGHT = 4
_STAMPS = itertools.count(1)  # frame timestamps increase per stream across every pass


def _frame_sink(endpoint: str, run_dir: str, ready: Any) -> None:
    """A worker that reads every byte of each frame where it lies and answers at once."""
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        channel = Channel(sock, source="sink")
        channel.send(WorkerCredit(credit=IN_FLIGHT * 2, model="sink", pid=mp.current_process().pid))
        frames = SharedFrames(pool_dir(Path(run_dir)))
        ready.set()
        while sock.poll(10_000):
            incoming = channel.recv()
            request: InferRequest = incoming.body
            shape = request.image.shape
            if request.shm is not None:
                pixels = frames.frame(request.shm, int(np.prod(shape)))
                image = np.frombuffer(pixels, np.uint8).reshape(shape)
            else:
                image = np.frombuffer(incoming.buffers[0].buffer, np.uint8).reshape(shape)
            np.add.reduce(image.reshape(-1).view(np.uint64))  # one read of every byte
            env = incoming.envelope
            if request.shm is not None and not frames.unchanged(request.shm):
                reply = ErrorReply(code=ErrorCode.INTERNAL, message="frame changed")
                channel.send(reply, envelope=channel.envelope(reply, seq=env.seq))
                continue
            result = InferResult(
                stream_id=request.stream_id,
                frame_ts_us=request.frame_ts_us,
                output=PerceptionOutput(confidence=0.0, timestamp_us=1, boxes=[]),
                model="sink",
                version="1",
            )
            channel.send(result, envelope=channel.envelope(result, seq=env.seq))
        frames.close()


def _stream_frames(client: Client, frames: list[np.ndarray], seconds: float) -> float:
    """Frames per second through the client with IN_FLIGHT requests outstanding."""
    sent = done = 0

    def send() -> None:
        nonlocal sent
        client.submit(
            frames[sent % len(frames)],
            stream_id=f"cam{sent % IN_FLIGHT}",
            frame_ts_us=next(_STAMPS),
            deadline_s=30,
        )
        sent += 1

    for _ in range(IN_FLIGHT):
        send()
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        reply = client.poll(30_000)
        if reply is None or not isinstance(reply[1], InferResult):
            raise RuntimeError(f"large frame not answered: {reply}")
        done += 1
        send()
    while client.in_flight:
        client.poll(30_000)
    return done / elapsed


def _memcpy_gb_s(frames: list[np.ndarray], seconds: float) -> float:
    target = np.empty_like(frames[0])
    copies, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        np.copyto(target, frames[copies % len(frames)])
        copies += 1
    return copies * frames[0].nbytes / elapsed / 1e9


def _pool_put_gb_s(directory: Path, frames: list[np.ndarray], seconds: float) -> float:
    """The client's one copy alone: frames put into the slots of a pool like the bench's
    (8 slots, each written in turn), in this process, with nothing else running. Unlike
    `memcpy_gb_s` (one target, which stays in the cache with the frames) it writes as much
    memory as the pipeline's frames in flight occupy."""
    with FramePool(directory, slots=8, slot_bytes=frames[0].nbytes) as pool:
        views = [memoryview(frame).cast("B") for frame in frames]
        for slot in range(pool.slots):  # pages touched once, as the warm pass does
            pool.put(slot, views[0])
        puts, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            pool.put(puts % pool.slots, views[puts % len(views)])
            puts += 1
    return puts * frames[0].nbytes / elapsed / 1e9


def large_frames(tmp: Path, seconds: float) -> dict[str, float]:
    """GB/s of 6 MB frames client -> ingest -> worker: shared memory, buffers, and memcpy."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, LARGE, dtype=np.uint8) for _ in range(4)]
    ingest = IngestConfig(publish_requests=False, worker_silence_ms=60_000)
    path = write(launch_file("busbench", node("ingest", ingest)), tmp)
    run = RunDir(tmp / "run")
    out: dict[str, float] = {}
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        ctx_mp = mp.get_context("spawn")
        ready = ctx_mp.Event()
        sink = ctx_mp.Process(target=_frame_sink, args=(run.ipc("workers"), str(run.path), ready))
        sink.start()
        try:
            ready.wait(60)
            for key, shared in (("large_frame_gb_s", True), ("large_frame_buffer_gb_s", False)):
                with Client(run.ipc("ingest"), shared_memory=shared, pool_slots=8) as client:
                    _stream_frames(client, frames, 0.5)  # warm: pages touched, pool mapped
                    rate = _stream_frames(client, frames, seconds)
                out[key] = round(rate * frames[0].nbytes / 1e9, 3)
        finally:
            sink.kill()
            sink.join()
    out["memcpy_gb_s"] = round(_memcpy_gb_s(frames, seconds), 3)
    out["pool_put_gb_s"] = round(_pool_put_gb_s(tmp, frames, seconds), 3)
    return out


def _pct(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples)
    return {
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p99": round(float(np.percentile(arr, 99)), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vigil bench bus", description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--rtt", type=int, default=3000)
    parser.add_argument("--frames-seconds", type=float, default=5.0)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp_name:
        tmp = Path(tmp_name)
        direct = f"ipc://{tmp}/direct"
        raw = _rate("raw", direct + "-raw", direct + "-raw", args.count)
        vig = _rate("vigil", direct + "-vigil", direct + "-vigil", args.count)
        with zmq.Context() as ctx, Proxy(ctx, f"ipc://{tmp}/xsub", f"ipc://{tmp}/xpub") as proxy:
            stop = threading.Event()

            def pump() -> None:
                poller = zmq.Poller()
                proxy.register(poller)
                while not stop.is_set():
                    proxy.handle(dict(poller.poll(50)))

            # The proxy runs in its own process in a launch; a thread here shares the GIL with
            # the publisher, so this row is a lower bound.
            thread = threading.Thread(target=pump)
            thread.start()
            try:
                proxied = _rate("vigil", f"ipc://{tmp}/xsub", f"ipc://{tmp}/xpub", args.count // 4)
            finally:
                stop.set()
                thread.join()
        raw_rtt = _rtt("raw", tmp, args.rtt)
        vig_rtt = _rtt("vigil", tmp, args.rtt)
    # The launcher's per-node lines would bury the table; warnings still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="vb-", dir="/tmp") as short:
        large = large_frames(Path(short), args.frames_seconds)
    result = {
        "vigil_msgs_s": round(vig),
        "raw_msgs_s": round(raw),
        "vigil_proxied_msgs_s": round(proxied),
        "ratio": round(vig / raw, 3),
        "vigil_rtt_us": _pct(vig_rtt),
        "raw_rtt_us": _pct(raw_rtt),
        **large,
    }
    rows = [
        ("raw pyzmq PUB/SUB", raw, result["raw_rtt_us"]),
        ("vigil Publisher/Subscriber", vig, result["vigil_rtt_us"]),
    ]
    print(f"{'':<28}{'msgs/s':>12}{'RTT p50 us':>12}{'RTT p99 us':>12}")
    for label, rate, rtt in rows:
        print(f"{label:<28}{rate:>12,.0f}{rtt['p50']:>12}{rtt['p99']:>12}")
    print(f"{'vigil through proxy thread':<28}{proxied:>12,.0f}")
    print(f"vigil / raw rate: {result['ratio']:.2f} (goal >= 0.5)")
    print(
        f"6 MB frames client -> ingest -> worker: shared memory {large['large_frame_gb_s']:.2f}"
        f" GB/s, buffer frames {large['large_frame_buffer_gb_s']:.2f} GB/s; memcpy"
        f" {large['memcpy_gb_s']:.2f} GB/s (shared memory / memcpy"
        f" {large['large_frame_gb_s'] / large['memcpy_gb_s']:.2f}, goal >= 0.5)"
    )
    alone = large["pool_put_gb_s"]
    print(
        f"the client's copy alone (into 8 pool slots, one process) {alone:.2f} GB/s"
        f" (shared memory / copy alone {large['large_frame_gb_s'] / alone:.2f})"
    )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
