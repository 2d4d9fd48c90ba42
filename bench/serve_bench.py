"""Serving benchmark: ResNet-50 through vigil's pipeline against its in-process ceiling and an
HTTP server, measured in the same run on the same model and session options.

Three systems serve the same generated ResNet-50 (seeded random weights, fp32 or `--fp16`):

* in-process ceiling: onnxruntime called directly in this process, one session using all the
  threads, at each batch size (the best one is the ceiling); I/O binding on CUDA;
* HTTP baseline: a Flask app wrapping one onnxruntime session (the usual alternative), driven
  by a pool of keep-alive HTTP clients;
* vigil: the real pipeline (logger, loader, N workers, ingest) launched in a temporary run
  directory, driven by AsyncClient.

Each served system runs closed-loop at several concurrencies (requests outstanding) and then
open-loop at fixed rates, fractions of its own closed-loop peak; latency of an open-loop
request counts from its scheduled send time, so a backlog shows in the tail. A point counts
the requests that complete inside its measured window (after a warm-up). The pipeline gets
the same total number of inference threads as the in-process session (workers x intra-op
threads = cores), since more would only oversubscribe the cores.

`--json PATH` writes pipeline_img_s, inprocess_img_s, baseline_http_img_s, p50_ms and p99_ms
(the pipeline at its best setting) with the full table; `--png PATH` plots throughput against
p99 latency per system.

`--evidence-cost` measures instead what each request's sealed evidence costs the serving
rate: the pipeline serves the small test classifier (so per-request costs are not hidden under
inference) closed-loop, launched afresh with the ingest's evidence on and off in interleaved
repetitions (on/off, off/on, ...), and prints every run, the median of each side and the
spread. The logger seals the evidence in its group commit in the "on" runs.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from vigil.bus.rundir import RunDir
from vigil.client import AsyncClient
from vigil.errors import RequestError
from vigil.launch import Launcher, LaunchFile, load
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.loader import LoaderConfig, PinnedModel
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig, read_entries
from vigil.nodes.worker import Device, EngineConfig, Task, WorkerConfig
from vigil.nodes.worker._engine import Engine
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import tiny_classifier

SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEADLINE_S = 60.0


def _models_module() -> Any:
    """bench/models.py, loaded beside this file (bench/ is a folder, not a package)."""
    path = Path(__file__).resolve().parent / "models.py"
    spec = importlib.util.spec_from_file_location("vigil_bench_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _session(model: Path, threads: int, device: str) -> Any:
    import onnxruntime as ort  # noqa: PLC0415 - imported where a session is built (spawned too)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(model), sess_options=options, providers=providers)


class _Preprocess:
    """The worker's normalisation (uint8 HWC -> normalised NCHW), for the other two systems."""

    def __init__(self, dtype: type[np.floating]) -> None:
        std = np.asarray(STD, np.float32)
        self.scale = (1.0 / (255.0 * std))[:, None, None].astype(np.float32)
        self.bias = (-np.asarray(MEAN, np.float32) / std)[:, None, None]
        self.dtype = dtype

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        batch = np.empty((len(frames), 3, SIZE, SIZE), self.dtype)
        for i, frame in enumerate(frames):
            np.multiply(frame.transpose(2, 0, 1), self.scale, out=batch[i], casting="unsafe")
            np.add(batch[i], self.bias, out=batch[i], casting="unsafe")
        return batch


def _pct(samples: list[float], q: float) -> float:
    return round(float(np.percentile(samples, q)), 1) if samples else float("nan")


def _row(
    system: str,
    mode: str,
    load_: float,
    done: list[tuple[float, float]],
    *,
    span: float,
    errors: int,
) -> dict[str, Any]:
    latencies = [(end - start) * 1000 for start, end in done]
    return {
        "system": system,
        "mode": mode,
        "load": round(load_, 2),
        "img_s": round(len(done) / span, 2),
        "p50_ms": _pct(latencies, 50),
        "p90_ms": _pct(latencies, 90),
        "p99_ms": _pct(latencies, 99),
        "completed": len(done),
        "errors": errors,
    }


# -- in-process ceiling ----------------------------------------------------------------------


def inprocess(model: Path, args: argparse.Namespace, frames: list[np.ndarray]) -> dict[int, float]:
    """Images/s of one session called directly, per batch size (preprocessing included)."""
    # The worker's own engine, called directly: the same session options and the same
    # preprocessing (on the GPU: pinned upload, the CUDA normalisation kernel, I/O binding).
    engine = Engine(
        model.read_bytes(),
        EngineConfig(
            task=Task.CLASSIFICATION,
            device=Device(args.device),
            intra_op_threads=args.threads,
            mean=MEAN,
            std=STD,
        ),
        name="resnet50",
        version="1",
    )
    rates = {}
    for batch in args.batches:
        chunk = [frames[i % len(frames)] for i in range(batch)]

        def step(chunk: list[np.ndarray] = chunk) -> None:
            engine.infer_frames(chunk)  # each batch is uploaded, as a server must

        step()
        images, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < args.duration:
            step()
            images += batch
        rates[batch] = round(images / elapsed, 2)
        print(f"  in-process batch {batch:>2}: {rates[batch]:8.2f} img/s", flush=True)
    return rates


# -- HTTP baseline ---------------------------------------------------------------------------


def _http_server(model: str, threads: int, device: str, fp16: bool) -> None:
    """A Flask app around one onnxruntime session, served by werkzeug with a thread per client.

    Runs in its own process (this file run with `--http-serve`); prints its port when ready.
    """
    from flask import Flask, Response, request  # noqa: PLC0415 - only in the server process
    from werkzeug.serving import make_server  # noqa: PLC0415

    session = _session(Path(model), threads, device)
    prep = _Preprocess(np.float16 if fp16 else np.float32)
    app = Flask("vigil-bench-http")

    @app.post("/infer")
    def infer() -> Response:
        frame = np.frombuffer(request.get_data(), np.uint8).reshape(SIZE, SIZE, 3)
        logits = session.run(None, {"input": prep([frame])})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        top = int(p.argmax())
        body = json.dumps({"class": top, "score": float(p[top] / p.sum())})
        return Response(body, mimetype="application/json")

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()


class _HttpDriver:
    """Keep-alive HTTP clients, one connection per thread."""

    def __init__(self, port: int, frames: list[np.ndarray]) -> None:
        self.port = port
        self.bodies = [f.tobytes() for f in frames]
        self.local = threading.local()

    def call(self, index: int) -> bool:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/infer", self.bodies[index % len(self.bodies)])
        response = conn.getresponse()
        response.read()
        return response.status == 200

    def closed(self, concurrency: int, warm: float, duration: float) -> tuple[list, int]:
        done: list[tuple[float, float]] = []
        errors = [0]
        start = time.perf_counter()
        measure_from, stop_at = start + warm, start + warm + duration

        def loop(worker: int) -> None:
            for i in itertools.count(worker):
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                ok = self.call(i)
                end = time.perf_counter()
                if not ok:
                    errors[0] += 1
                elif measure_from <= end <= stop_at:
                    done.append((sent, end))

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(loop, range(concurrency)))
        return done, errors[0]

    def open(self, rate: float, warm: float, duration: float) -> tuple[list, int]:
        done: list[tuple[float, float]] = []
        errors = [0]
        start = time.perf_counter()
        measure_from, stop_at = start + warm, start + warm + duration

        def one(i: int, scheduled: float) -> None:
            ok = self.call(i)
            end = time.perf_counter()
            if not ok:
                errors[0] += 1
            elif measure_from <= end <= stop_at:
                done.append((scheduled, end))

        with ThreadPoolExecutor(64) as pool:
            for i in itertools.count():
                scheduled = start + i / rate
                if scheduled >= stop_at:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one, i, scheduled)
        return done, errors[0]


def http_baseline(model: Path, args: argparse.Namespace, frames: list[np.ndarray]) -> list[dict]:
    """The HTTP server under the same closed- and open-loop load."""
    command = [sys.executable, __file__, "--http-serve", str(model), str(args.threads)]
    command += [args.device, "fp16" if args.fp16 else "fp32"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as server:
        assert server.stdout is not None
        try:
            driver = _HttpDriver(int(server.stdout.readline()), frames)
            driver.call(0)  # the first run pays the session's start-up
            return _sweep("http", driver.closed, driver.open, args)
        finally:
            server.terminate()


# -- vigil -----------------------------------------------------------------------------------


def _launch(model: Path, args: argparse.Namespace) -> LaunchFile:
    import hashlib  # noqa: PLC0415

    engine = EngineConfig(
        task=Task.CLASSIFICATION,
        device=Device(args.device),
        intra_op_threads=args.worker_threads,
        mean=MEAN,
        std=STD,
    )
    pinned = PinnedModel(
        name="resnet50",
        version="fp16" if args.fp16 else "fp32",
        path=str(model),
        sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
    )
    worker = WorkerConfig(
        max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us,
        warm_height=SIZE,
        warm_width=SIZE,
        engine=engine,
    )
    return launch_file(
        "servebench",
        node("logger", LoggerConfig(store=StoreConfig(path="log.store"))),
        node("loader", LoaderConfig(pinned=pinned)),
        node("worker", worker, replicas=args.workers),
        node("ingest", IngestConfig(default_deadline_ms=60_000, publish_requests=False)),
        heartbeat_ms=200,
        ready_timeout_s=120,
    )


class _VigilDriver:
    """AsyncClient load: coroutines for closed loop, scheduled tasks for open loop."""

    def __init__(self, endpoint: str, frames: list[np.ndarray]) -> None:
        self.endpoint = endpoint
        self.frames = frames
        self.ts = itertools.count(1)
        self.stages: list[tuple[float, float, int]] = []

    async def _call(self, client: AsyncClient, i: int, stream: str) -> bool:
        try:
            result = await client.infer(
                self.frames[i % len(self.frames)],
                stream_id=stream,
                frame_ts_us=next(self.ts),
                deadline_s=DEADLINE_S,
            )
        except RequestError:
            return False
        # Where the time went, from the worker's own stamps (queue = arrival to batch start).
        self.stages.append((result.queue_us / 1000, result.infer_us / 1000, result.batch_size))
        return True

    def closed(self, concurrency: int, warm: float, duration: float) -> tuple[list, int]:
        return asyncio.run(self._closed(concurrency, warm, duration))

    async def _closed(self, concurrency: int, warm: float, duration: float) -> tuple[list, int]:
        done: list[tuple[float, float]] = []
        errors = 0
        start = time.perf_counter()
        measure_from, stop_at = start + warm, start + warm + duration
        async with AsyncClient(self.endpoint, name="bench") as client:

            async def loop(worker: int) -> None:
                nonlocal errors
                for i in itertools.count(worker):
                    sent = time.perf_counter()
                    if sent >= stop_at:
                        return
                    ok = await self._call(client, i, f"s{worker}")
                    end = time.perf_counter()
                    if not ok:
                        errors += 1
                    elif measure_from <= end <= stop_at:
                        done.append((sent, end))

            await asyncio.gather(*(loop(w) for w in range(concurrency)))
        return done, errors

    def open(self, rate: float, warm: float, duration: float) -> tuple[list, int]:
        return asyncio.run(self._open(rate, warm, duration))

    async def _open(self, rate: float, warm: float, duration: float) -> tuple[list, int]:
        done: list[tuple[float, float]] = []
        errors = 0
        start = time.perf_counter()
        measure_from, stop_at = start + warm, start + warm + duration
        async with AsyncClient(self.endpoint, name="bench") as client:

            async def one(i: int, scheduled: float) -> None:
                nonlocal errors
                # One stream per request: tasks may send out of creation order, and a
                # stream's timestamps must increase.
                ok = await self._call(client, i, f"open{i}")
                end = time.perf_counter()
                if not ok:
                    errors += 1
                elif measure_from <= end <= stop_at:
                    done.append((scheduled, end))

            tasks = []
            for i in itertools.count():
                scheduled = start + i / rate
                if scheduled >= stop_at:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, scheduled)))
            await asyncio.gather(*tasks)
        return done, errors


def vigil_pipeline(
    model: Path, args: argparse.Namespace, frames: list[np.ndarray], tmp: Path
) -> list[dict]:
    """vigil's pipeline, launched for real, under the same load."""
    path = write(_launch(model, args), tmp)
    run = RunDir(tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        driver = _VigilDriver(run.ipc("ingest"), frames)
        # Every worker has loaded and warmed once its first request comes back.
        driver.closed(args.workers, 0.0, 1.0)
        rows = []

        def staged(run: Callable[..., tuple[list, int]]) -> Callable[..., tuple[list, int]]:
            def measured(*a: Any) -> tuple[list, int]:
                driver.stages.clear()
                out = run(*a)
                if driver.stages:
                    q, i, b = (np.asarray(x) for x in zip(*driver.stages, strict=True))
                    print(
                        f"           worker stamps: queue p50/p99 {np.percentile(q, 50):.1f}/"
                        f"{np.percentile(q, 99):.1f} ms, infer p50/p99 {np.percentile(i, 50):.1f}/"
                        f"{np.percentile(i, 99):.1f} ms, mean batch {b.mean():.1f}",
                        flush=True,
                    )
                return out

            return measured

        rows = _sweep("vigil", staged(driver.closed), staged(driver.open), args)
        return rows


# -- the cost of per-request evidence ---------------------------------------------------------


def _evidence_launch(model: Path, args: argparse.Namespace, *, evidence: bool) -> LaunchFile:
    import hashlib  # noqa: PLC0415

    pinned = PinnedModel(
        name="tiny",
        version="1",
        path=str(model),
        sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
    )
    engine = EngineConfig(
        task=Task.CLASSIFICATION, mean=(0, 0, 0), std=(1, 1, 1), intra_op_threads=1
    )
    worker = WorkerConfig(
        max_batch=4, max_queue_delay_us=500, warm_height=32, warm_width=32, engine=engine
    )
    ingest = IngestConfig(
        default_deadline_ms=60_000, publish_requests=False, publish_evidence=evidence
    )
    return launch_file(
        "evidencebench",
        node("logger", LoggerConfig(store=StoreConfig(path="log.store"))),
        node("loader", LoaderConfig(pinned=pinned)),
        node("worker", worker, replicas=args.workers),
        node("ingest", ingest),
        heartbeat_ms=200,
        ready_timeout_s=120,
    )


def _evidence_run(model: Path, args: argparse.Namespace, tmp: Path, *, evidence: bool) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="ev-", dir=tmp))
    path = write(_evidence_launch(model, args, evidence=evidence), folder)
    run = RunDir(folder / "run")
    frames = [np.full((32, 32, 3), i * 30, dtype=np.uint8) for i in range(8)]
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        driver = _VigilDriver(run.ipc("ingest"), frames)
        driver.closed(args.workers, 0.0, 1.0)  # every worker warm
        done, errors = driver.closed(args.concurrency[0], args.warm, args.duration)
    latencies = [(end - start) * 1000 for start, end in done]
    entries = sum(1 for _ in read_entries(run.path / "log.store"))
    return {
        "evidence": evidence,
        "req_s": round(len(done) / args.duration, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3) if latencies else float("nan"),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3) if latencies else float("nan"),
        "errors": errors,
        "sealed_entries": entries,
    }


def evidence_cost(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Interleaved runs with the ingest's per-request evidence on and off; the spread."""
    model = tmp / "tiny.onnx"
    model.write_bytes(tiny_classifier(args.seed))
    runs: list[dict] = []
    for rep_ in range(args.repeats):
        order = (True, False) if rep_ % 2 == 0 else (False, True)
        for evidence in order:
            runs.append(_evidence_run(model, args, tmp, evidence=evidence))
            r = runs[-1]
            print(
                f"  run {len(runs):>2} evidence {'on ' if evidence else 'off'}"
                f"  {r['req_s']:8.1f} req/s"
                f"  p50 {r['p50_ms']:7.3f}  p99 {r['p99_ms']:7.3f} ms  errors {r['errors']}"
                f"  sealed entries {r['sealed_entries']}",
                flush=True,
            )
    summary: dict[str, Any] = {"runs": runs}
    for side, flag in (("on", True), ("off", False)):
        rates = [r["req_s"] for r in runs if r["evidence"] is flag]
        p99 = [r["p99_ms"] for r in runs if r["evidence"] is flag]
        summary[side] = {
            "req_s_median": float(np.median(rates)),
            "req_s_min": min(rates),
            "req_s_max": max(rates),
            "p99_ms_median": float(np.median(p99)),
        }
    on, off = summary["on"]["req_s_median"], summary["off"]["req_s_median"]
    summary["rate_change_pct"] = round((on - off) / off * 100, 1) if off else float("nan")
    print(
        f"evidence on: median {on:.1f} req/s (min {summary['on']['req_s_min']:.1f}, max "
        f"{summary['on']['req_s_max']:.1f}); off: median {off:.1f} req/s (min "
        f"{summary['off']['req_s_min']:.1f}, max {summary['off']['req_s_max']:.1f}); "
        f"change {summary['rate_change_pct']:+.1f} %; p99 median on "
        f"{summary['on']['p99_ms_median']:.3f} ms, off {summary['off']['p99_ms_median']:.3f} ms",
        flush=True,
    )
    return summary


# -- the sweep -------------------------------------------------------------------------------


def _sweep(
    system: str,
    closed: Callable[[int, float, float], tuple[list, int]],
    open_: Callable[[float, float, float], tuple[list, int]],
    args: argparse.Namespace,
) -> list[dict]:
    rows = []
    for concurrency in args.concurrency:
        done, errors = closed(concurrency, args.warm, args.duration)
        rows.append(_row(system, "closed", concurrency, done, span=args.duration, errors=errors))
        _print_row(rows[-1])
    peak = max(r["img_s"] for r in rows)
    for fraction in args.rates:
        rate = max(0.1, peak * fraction)
        done, errors = open_(rate, args.warm, args.duration)
        rows.append(_row(system, "open", rate, done, span=args.duration, errors=errors))
        _print_row(rows[-1])
    return rows


def _print_row(row: dict[str, Any]) -> None:
    load_ = f"c={row['load']:g}" if row["mode"] == "closed" else f"{row['load']:.1f}/s"
    print(
        f"  {row['system']:<6} {row['mode']:<6} {load_:>9}  {row['img_s']:8.2f} img/s"
        f"  p50 {row['p50_ms']:8.1f}  p90 {row['p90_ms']:8.1f}  p99 {row['p99_ms']:8.1f} ms"
        f"  errors {row['errors']}",
        flush=True,
    )


def _plot(path: str, rows: list[dict], ceiling: float) -> None:
    import matplotlib  # noqa: PLC0415 - optional, only for --png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, marker in (("vigil", "o"), ("http", "s")):
        points = sorted((r["p99_ms"], r["img_s"]) for r in rows if r["system"] == system)
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, label=system)
    ax.axhline(ceiling, color="grey", linestyle="--", label="in-process ceiling")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (images/s)")
    ax.set_xscale("log")
    ax.set_title("ResNet-50 serving: throughput vs p99 latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--http-serve"]:
        model, threads, device, precision = argv[1:5]
        _http_server(model, int(threads), device, precision == "fp16")
        return 0
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(prog="vigil bench serve", description=__doc__)
    parser.add_argument("--fp16", action="store_true", help="serve the float16 model")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--threads", type=int, default=cores, help="in-process/HTTP threads")
    parser.add_argument("--workers", type=int, default=None, help="default: cores (cpu), 1")
    parser.add_argument("--worker-threads", type=int, default=None, help="intra-op per worker")
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=None, help="seconds per point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--png", dest="png_path", default=None)
    parser.add_argument(
        "--evidence-cost", action="store_true", help="per-request evidence on vs off (see above)"
    )
    parser.add_argument("--repeats", type=int, default=4, help="--evidence-cost pairs of runs")
    parser.add_argument(
        "--evidence-concurrency", type=int, default=8, help="--evidence-cost requests in flight"
    )
    args = parser.parse_args(argv)
    # The launcher's per-node lines would bury the table; warnings still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    gpu = args.device == "cuda"
    # The fair split of the cores: as many single-threaded workers as cores (no thread pool
    # contending with another), two workers sharing the device on a GPU (one
    # batch copies in and out while the other computes; measured best on an H100).
    if args.workers is None:
        args.workers = 2 if gpu else max(1, args.threads)
    if args.worker_threads is None:
        args.worker_threads = args.threads if gpu else max(1, args.threads // args.workers)
    if args.max_batch is None:
        args.max_batch = 32 if gpu else 1
    if args.quick:
        args.duration = args.duration or 2.0
        args.warm, args.batches, args.concurrency, args.rates = 0.5, [1, 4], [1, 4], [0.5]
    else:
        args.duration = args.duration or 10.0
        args.warm, args.batches = 2.0, [1, 2, 4, 8]
        args.concurrency, args.rates = [1, 2, 4, 8], [0.3, 0.5, 0.7, 0.9]
        if gpu:  # a GPU wants big batches: sweep further
            args.batches = [1, 4, 8, 16, 32]
            args.concurrency = [1, 4, 16, 32, 64, 128]
    if args.evidence_cost:
        args.duration = args.duration or (3.0 if args.quick else 8.0)
        args.warm, args.concurrency = 1.0, [args.evidence_concurrency]
        print(
            f"evidence cost: tiny classifier, {args.workers} workers x 1 thread, concurrency "
            f"{args.concurrency[0]}, {args.duration:g} s per run, {args.repeats} interleaved pairs",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="vb-", dir="/tmp") as tmp_name:
            summary = evidence_cost(args, Path(tmp_name))
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(summary, indent=2))
        return 0
    rng = np.random.default_rng(args.seed)
    frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(8)]
    with tempfile.TemporaryDirectory(prefix="vb-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        model = _models_module().resnet50(tmp / "resnet50.onnx", fp16=args.fp16, seed=args.seed)
        print(
            f"ResNet-50 {'fp16' if args.fp16 else 'fp32'} on {args.device}, {cores} cores; "
            f"in-process/HTTP {args.threads} threads; vigil {args.workers} workers x "
            f"{args.worker_threads} threads, max_batch {args.max_batch}, "
            f"max_queue_delay_us {args.max_queue_delay_us}",
            flush=True,
        )
        ceiling = inprocess(model, args, frames)
        rows = http_baseline(model, args, frames)
        rows += vigil_pipeline(model, args, frames, tmp)
    best_batch = max(ceiling, key=lambda b: ceiling[b])
    inproc = ceiling[best_batch]
    best = max((r for r in rows if r["system"] == "vigil"), key=lambda r: r["img_s"])
    http_best = max(r["img_s"] for r in rows if r["system"] == "http")
    summary = {
        "pipeline_img_s": best["img_s"],
        "inprocess_img_s": inproc,
        "baseline_http_img_s": http_best,
        "p50_ms": best["p50_ms"],
        "p99_ms": best["p99_ms"],
        "pipeline_vs_inprocess": round(best["img_s"] / inproc, 3),
        "inprocess_best_batch": best_batch,
        "inprocess": {str(b): v for b, v in ceiling.items()},
        "config": {
            "model": "resnet50-fp16" if args.fp16 else "resnet50-fp32",
            "device": args.device,
            "cores": cores,
            "threads": args.threads,
            "workers": args.workers,
            "worker_threads": args.worker_threads,
            "max_batch": args.max_batch,
            "max_queue_delay_us": args.max_queue_delay_us,
            "duration_s": args.duration,
        },
        "table": rows,
    }
    print(
        f"in-process {inproc:.2f} img/s (batch {best_batch}); http {http_best:.2f} img/s; "
        f"vigil {best['img_s']:.2f} img/s = {summary['pipeline_vs_inprocess']:.2f} x in-process "
        f"(p50 {best['p50_ms']} ms, p99 {best['p99_ms']} ms)"
    )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=2))
    if args.png_path:
        _plot(args.png_path, rows, inproc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
