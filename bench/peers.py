"""The serving benchmark's peers: the same model behind the servers people deploy instead.

Each runs in its own process tree, started by `serve_bench.py` as a user would start it:

* `flask_app()`: a Flask app around one onnxruntime session per process, served by gunicorn
  (`gunicorn -w W --threads T 'peers:flask_app()'`, workers x threads = cores). The body is
  the raw uint8 frame.
* `litserve_peer.py`: a LitServe server with its dynamic batching (`max_batch_size`,
  `batch_timeout`). The body is JSON with the frame in base64, as LitServe takes input.
* `inprocess_main()`: no server at all, onnxruntime called directly at each batch size (the
  ceiling), and one request at a time (the single-request latency to compare against).

Every peer preprocesses exactly as vigil's worker does and answers the top class and its
probability. The model path, thread count and precision come from the environment
(`VIGIL_BENCH_MODEL`, `VIGIL_BENCH_THREADS`, `VIGIL_BENCH_FP16`), the way a WSGI factory
is configured.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import numpy as np

SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def session(model: str, threads: int) -> Any:
    """A plain onnxruntime session with `threads` intra-op threads (on the GPU when
    `VIGIL_BENCH_DEVICE=cuda`: pre- and post-processing stay on the host, as such servers
    do)."""
    import onnxruntime as ort  # noqa: PLC0415 - imported in the serving process only

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if os.environ.get("VIGIL_BENCH_DEVICE") == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(model, sess_options=options, providers=providers)


class Preprocess:
    """vigil's normalisation (uint8 HWC -> normalised NCHW) for frames of one size."""

    def __init__(self, fp16: bool = False) -> None:
        std = np.asarray(STD, np.float32)
        self.scale = (1.0 / (255.0 * std))[:, None, None].astype(np.float32)
        self.bias = (-np.asarray(MEAN, np.float32) / std)[:, None, None]
        self.dtype = np.float16 if fp16 else np.float32

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        batch = np.empty((len(frames), 3, SIZE, SIZE), self.dtype)
        for i, frame in enumerate(frames):
            np.multiply(frame.transpose(2, 0, 1), self.scale, out=batch[i], casting="unsafe")
            np.add(batch[i], self.bias, out=batch[i], casting="unsafe")
        return batch


def top1(logits: np.ndarray) -> dict[str, float | int]:
    """The top class and its softmax probability, as vigil's classification answer has it."""
    z = logits.astype(np.float64).ravel()
    p = np.exp(z - z.max())
    top = int(p.argmax())
    return {"class": top, "score": float(p[top] / p.sum())}


def env() -> tuple[str, int, bool]:
    return (
        os.environ["VIGIL_BENCH_MODEL"],
        int(os.environ.get("VIGIL_BENCH_THREADS", "1")),
        os.environ.get("VIGIL_BENCH_FP16", "") == "1",
    )


# -- gunicorn + Flask ------------------------------------------------------------------------


def flask_app() -> Any:
    """The WSGI app gunicorn serves: POST /infer with the raw frame, JSON back."""
    from flask import Flask, Response, request  # noqa: PLC0415 - only in the server process

    model, threads, fp16 = env()
    sess = session(model, threads)
    prep = Preprocess(fp16)
    app = Flask("vigil-bench-flask")

    @app.post("/infer")
    def infer() -> Response:
        frame = np.frombuffer(request.get_data(), np.uint8).reshape(SIZE, SIZE, 3)
        logits = sess.run(None, {"input": prep([frame])})[0][0]
        return Response(json.dumps(top1(logits)), mimetype="application/json")

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


# -- in-process ------------------------------------------------------------------------------


def inprocess_main(batches: list[int], duration_s: float, singles: int) -> None:
    """Print one JSON line: images/s per batch size (preprocessing included, each batch
    normalised from uint8 frames as a server must) and single-request latencies in ms."""
    model, threads, fp16 = env()
    run = _gpu_engine(model, threads) if os.environ.get("VIGIL_BENCH_DEVICE") == "cuda" else None
    sess = session(model, threads) if run is None else None
    prep = Preprocess(fp16)

    def infer(chunk: list[np.ndarray]) -> np.ndarray:
        if run is not None:
            return run(chunk)
        return sess.run(None, {"input": prep(chunk)})[0]

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(8)]
    rates: dict[str, float] = {}
    images_total = 0
    for batch in batches:
        chunk = [frames[i % len(frames)] for i in range(batch)]
        infer(chunk)
        images, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < duration_s:
            top1(infer(chunk)[0])
            images += batch
        rates[str(batch)] = images / elapsed
        images_total += images
    latencies = []
    for i in range(singles):
        start = time.perf_counter()
        top1(infer([frames[i % len(frames)]])[0])
        latencies.append((time.perf_counter() - start) * 1000)
    images_total += singles
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "rates": rates,
        "single_ms": latencies,
        "images": images_total,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
    }
    print(json.dumps(report), flush=True)


def _gpu_engine(model: str, threads: int) -> Any:
    """On a GPU, the ceiling is vigil's own engine called directly: pinned upload, the CUDA
    normalising kernel and I/O binding (what the worker runs, without the pipeline)."""
    from pathlib import Path  # noqa: PLC0415

    from vigil.nodes.worker import Device, EngineConfig, Task  # noqa: PLC0415
    from vigil.nodes.worker._engine import Engine  # noqa: PLC0415

    config = EngineConfig(
        task=Task.CLASSIFICATION,
        device=Device.CUDA,
        intra_op_threads=threads,
        mean=MEAN,
        std=STD,
    )
    engine = Engine(Path(model).read_bytes(), config, name="resnet50", version="1")
    return engine.infer_frames


def main(argv: list[str]) -> int:
    """`peers.py inprocess BATCHES DURATION_S SINGLES`."""
    if argv[:1] == ["inprocess"]:
        inprocess_main([int(b) for b in argv[1].split(",")], float(argv[2]), int(argv[3]))
    else:
        print(main.__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
