"""Serving benchmark: vigil's pipeline against the servers people deploy, side by side.

The same generated ResNet-50 (seeded random weights), the same frames and the same total
onnxruntime thread budget (`--threads`, default: every core) for every system:

* `inprocess`: onnxruntime called directly in one process, one session using the whole
  budget, at each batch size: the best is the *ceiling*; one request at a time gives the
  single-request latency;
* `litserve`: LitServe with its dynamic batching (`--litserve-workers` x threads = budget);
* `gunicorn`: Flask under gunicorn, sync workers (workers x threads = budget, one
  single-threaded session per worker);
* `pipeline`: vigil itself, started with `vigil launch` (logger, loader, one adaptive worker
  with the whole budget, ingest), driven through AsyncClient.

Every served system runs closed loop at each concurrency (`--concurrency`, default 1 4 16 64)
from one asyncio client in this process (keep-alive HTTP/1.1 for the peers). Systems are
measured in interleaved repetitions, every other one in reverse order (A B C D D C B A ...;
each started afresh), so a machine that slows down or speeds up during the run does not
favour the systems measured first; each figure is the median over repetitions, with its
spread (min, max). For each point: images/s,
p50/p99 latency, CPU-seconds per image over the server's whole process tree, and its peak
resident memory (RSS summed over the tree, sampled; `pss_mib` counts shared pages once).

`--json PATH` writes `pipeline_img_s` (best concurrency), `inprocess_img_s` (best batch),
`peers` -> system -> concurrency -> {img_s, p50_ms, p99_ms, cpu_s_per_img, rss_mib, ...},
`single_p50_ratio` (pipeline at concurrency 1 over in-process single-request p50), `ready_s`
(launch to first answer, per system), the pipeline's per-process CPU and memory
(`pipeline_processes`), the CPU share of its non-worker processes at full load
(`nonworker_cpu_share`) and its stage stamps. `--png PATH` plots throughput per system.

`--evidence-cost` measures instead what each request's sealed evidence costs the serving
rate: the pipeline serves the small test classifier (so per-request costs are not hidden under
inference) closed-loop, launched afresh with the ingest's evidence on and off in interleaved
repetitions (on/off, off/on, ...), and prints every run, the median of each side and the
spread. The logger seals the evidence in its group commit in the "on" runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from vigil.bus.rundir import RunDir
from vigil.client import AsyncClient
from vigil.errors import RequestError
from vigil.schemas import InferResult

if TYPE_CHECKING:
    from vigil.launch import LaunchFile

_BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(_BENCH))  # peers.py and models.py sit beside this file

import peers  # noqa: E402

import models  # noqa: E402

SIZE = peers.SIZE
DEADLINE_S = 120.0
SYSTEMS = ("inprocess", "litserve", "gunicorn", "pipeline")
SERVED = SYSTEMS[1:]


# -- measuring a process tree ----------------------------------------------------------------


def _label(proc: psutil.Process) -> str:
    """A short name for a process of a server's tree (vigil nodes by their node name)."""
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    for arg in cmd:
        if arg.startswith('{"name":'):
            return str(json.loads(arg).get("name", "node"))
    if "launch" in cmd:
        return "launcher"
    return Path(cmd[0]).name if cmd else "?"


class Tree:
    """A server's process tree: CPU time, resident memory, per process."""

    def __init__(self, root: int) -> None:
        self.root = psutil.Process(root)
        self._known: dict[int, psutil.Process] = {}

    def processes(self) -> list[psutil.Process]:
        """The root and every descendant alive now (the same objects across calls)."""
        try:
            found = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        out = []
        for proc in found:
            out.append(self._known.setdefault(proc.pid, proc))
        return out

    def cpu(self) -> dict[int, tuple[str, float]]:
        """CPU-seconds (user + system) per pid, with its label."""
        out = {}
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                t = proc.cpu_times()
                out[proc.pid] = (_label(proc), t.user + t.system)
        return out

    def rss_mib(self) -> float:
        """Resident memory of the whole tree (MiB)."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        return total / 2**20

    def memory(self) -> dict[int, tuple[str, float, float]]:
        """(label, RSS MiB, PSS MiB) per pid."""
        out = {}
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                info = proc.memory_full_info()
                out[proc.pid] = (_label(proc), info.rss / 2**20, info.pss / 2**20)
        return out


class PeakRss(threading.Thread):
    """Samples a tree's summed RSS until stopped; `peak` is the largest seen."""

    def __init__(self, tree: Tree, period_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.tree = tree
        self.period_s = period_s
        self.peak = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.tree.rss_mib())
            self._stop_event.wait(self.period_s)

    def stop(self) -> float:
        """Stop sampling; the peak."""
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.tree.rss_mib())
        return self.peak


def cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU-seconds spent between two readings, per process label (same labels summed)."""
    out: dict[str, float] = {}
    for pid, (label, cpu) in after.items():
        out[label] = out.get(label, 0.0) + cpu - before.get(pid, (label, 0.0))[1]
    return out


# -- closed loop -----------------------------------------------------------------------------


@dataclass
class Point:
    """One system at one concurrency in one repetition."""

    done: list[tuple[float, float]] = field(default_factory=list)  # (sent, answered)
    completed: int = 0
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    stages: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    def row(self, span: float) -> dict[str, Any]:
        latencies = [(end - start) * 1000 for start, end in self.done]
        cpu = sum(self.cpu.values())
        return {
            "img_s": len(self.done) / span,
            "p50_ms": _pct(latencies, 50),
            "p99_ms": _pct(latencies, 99),
            "cpu_s_per_img": cpu / self.completed if self.completed else float("nan"),
            "rss_mib": self.rss_mib,
            "pss_mib": self.pss_mib,
            "errors": self.errors,
        }


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) if samples else float("nan")


Call = Callable[[Any, int], Awaitable[tuple[Any, bool]]]


async def closed_loop(
    call: Call, concurrency: int, warm_s: float, duration_s: float, point: Point
) -> None:
    """`concurrency` callers, each sending its next request when the last one is answered;
    answers inside [warm_s, warm_s + duration_s) count toward the figures."""
    start = time.perf_counter()
    measure_from, stop_at = start + warm_s, start + warm_s + duration_s

    async def caller(index: int) -> None:
        state: Any = None
        for i in itertools.count(index, concurrency):
            sent = time.perf_counter()
            if sent >= stop_at:
                break
            state, ok = await call(state, i)
            end = time.perf_counter()
            point.completed += ok
            point.errors += not ok
            if ok and measure_from <= end < stop_at:
                point.done.append((sent, end))
        if state is not None and hasattr(state, "close"):
            state.close()

    await asyncio.gather(*(caller(i) for i in range(concurrency)))


class _Connection:
    """One keep-alive HTTP/1.1 connection (reopened when the server closes it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


def http_call(port: int, path: str, bodies: list[bytes], content_type: str) -> Call:
    """A closed-loop call that POSTs `bodies[i]` over the caller's own connection."""
    heads = [
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]

    async def call(conn: _Connection | None, i: int) -> tuple[_Connection | None, bool]:
        try:
            if conn is None:
                conn = _Connection(*await asyncio.open_connection("127.0.0.1", port))
            conn.writer.write(heads[i % len(heads)])
            status = await conn.reader.readline()
            length, keep = 0, True
            while (line := await conn.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and value.strip().lower() == "close":
                    keep = False
            await conn.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError):
            if conn is not None:
                conn.close()
            return None, False
        if not keep:
            conn.close()
            conn = None
        return conn, status.split(b" ", 2)[1:2] == [b"200"]

    return call


# Frame timestamps must increase per stream across every call of a run, probes included.
_STAMPS = itertools.count(1)


def vigil_call(client: AsyncClient, frames: list[np.ndarray], point: Point) -> Call:
    """A closed-loop call through vigil's AsyncClient; records each result's stage stamps."""

    async def call(state: None, i: int) -> tuple[None, bool]:
        try:
            result: InferResult = await client.infer(
                frames[i % len(frames)],
                stream_id=f"s{i % 1024}",
                frame_ts_us=next(_STAMPS),
                deadline_s=DEADLINE_S,
            )
        except RequestError as exc:
            point.failures[type(exc).__name__] = point.failures.get(type(exc).__name__, 0) + 1
            return None, False
        point.stages.append(
            (
                result.socket_us,
                result.queue_us,
                result.infer_us,
                result.batch_size,
                result.threads,
            )
        )
        return None, True

    return call


# -- the systems -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A started system: its process tree, how to call it, and how long it took to be ready."""

    tree: Tree
    call: Callable[[Point], Call]
    ready_s: float
    client: Any = None


def _env(model: Path, threads: int, args: argparse.Namespace) -> dict[str, str]:
    return {
        **os.environ,
        "VIGIL_BENCH_MODEL": str(model),
        "VIGIL_BENCH_THREADS": str(threads),
        "VIGIL_BENCH_DEVICE": args.device,
        "VIGIL_BENCH_FP16": "1" if args.fp16 else "",
        "PYTHONPATH": os.pathsep.join([str(_BENCH), os.environ.get("PYTHONPATH", "")]),
    }


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            proc.kill()
            proc.wait()


async def _first_answer(call: Call, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    """Call until one request is answered (the server is up and its model warm)."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it answered")
        state, ok = await call(state, 0)
        if ok:
            if state is not None and hasattr(state, "close"):
                state.close()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("server not ready in time")


@contextlib.contextmanager
def http_server(
    system: str, model: Path, args: argparse.Namespace, frames: list[np.ndarray], log: Path
) -> Iterator[Server]:
    """Start gunicorn+Flask or LitServe, wait for its first answer, stop it afterwards."""
    port = _free_port()
    raw = [f.tobytes() for f in frames]
    if system == "gunicorn":
        workers = args.gunicorn_workers
        threads = max(1, args.threads // (workers * args.gunicorn_threads))
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(workers),
            "--threads",
            str(args.gunicorn_threads),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--timeout",
            "300",
            "peers:flask_app()",
        ]
        path, bodies, content_type = "/infer", raw, "application/octet-stream"
    else:
        workers = args.litserve_workers
        threads = max(1, args.threads // workers)
        command = [sys.executable, str(_BENCH / "litserve_peer.py"), str(port), str(workers)]
        command += [str(args.max_batch), str(args.max_queue_delay_us / 1e6)]
        path, content_type = "/predict", "application/json"
        bodies = [json.dumps({"image": base64.b64encode(r).decode()}).encode() for r in raw]
    call = http_call(port, path, bodies, content_type)
    started = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            env=_env(model, threads, args),
            cwd=_BENCH,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        asyncio.run(_first_answer(call, 300, proc))
        yield Server(Tree(proc.pid), lambda point: call, time.perf_counter() - started)
    finally:
        _stop(proc, signal.SIGTERM if system == "gunicorn" else signal.SIGINT)


def pipeline_launch(model: Path, args: argparse.Namespace, folder: Path) -> Path:
    """The launch file of the pipeline under test; returns its path."""
    import hashlib  # noqa: PLC0415

    from vigil.nodes.ingest import IngestConfig  # noqa: PLC0415
    from vigil.nodes.loader import LoaderConfig, PinnedModel  # noqa: PLC0415
    from vigil.nodes.logger import LoggerConfig  # noqa: PLC0415
    from vigil.nodes.logger.store import StoreConfig  # noqa: PLC0415
    from vigil.nodes.worker import Device, EngineConfig, Task, WorkerConfig  # noqa: PLC0415
    from vigil.testing.launchfiles import launch_file, node, write  # noqa: PLC0415

    engine = EngineConfig(
        task=Task.CLASSIFICATION,
        device=Device(args.device),
        intra_op_threads=args.threads // args.workers,
        mean=peers.MEAN,
        std=peers.STD,
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
    return write(
        launch_file(
            "servebench",
            node("logger", LoggerConfig(store=StoreConfig(path="log.store"))),
            node("loader", LoaderConfig(pinned=pinned)),
            node("worker", worker, replicas=args.workers),
            # A worker is presumed hung after 1.5 s without a word by default; on a host
            # loaded many times over (as shared CI machines are) that fired falsely, and the
            # re-dispatched work ran twice. The bench measures serving, not that detector.
            node(
                "ingest",
                IngestConfig(default_deadline_ms=60_000, max_queue=1024, worker_silence_ms=10_000),
            ),
            heartbeat_ms=200,
            ready_timeout_s=300,
        ),
        folder,
    )


@contextlib.contextmanager
def pipeline_server(
    model: Path, args: argparse.Namespace, frames: list[np.ndarray], tmp: Path, log: Path
) -> Iterator[Server]:
    """`vigil launch` the pipeline; ready when its first request is answered."""
    folder = Path(tempfile.mkdtemp(prefix="p-", dir=tmp))
    path = pipeline_launch(model, args, folder)
    run_dir = folder / "run"
    vigil = Path(sys.executable).with_name("vigil")
    command = [str(vigil), "launch", str(path), "--run-dir", str(run_dir)]
    started = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    endpoint = RunDir(run_dir).ipc("ingest")  # made here, used as is by the launcher
    try:
        probe = Point()

        async def ready() -> None:
            # The client connects before the ingest binds; its request waits in the socket.
            async with AsyncClient(endpoint, name="bench") as client:
                await _first_answer(vigil_call(client, frames, probe), 300, proc)

        asyncio.run(ready())

        def call(point: Point) -> Call:
            raise AssertionError("bound per run: see _measure")  # pragma: no cover

        server = Server(Tree(proc.pid), call, time.perf_counter() - started, client=endpoint)
        yield server
    finally:
        _stop(proc)


# -- one repetition --------------------------------------------------------------------------


# -- the cost of per-request evidence ---------------------------------------------------------


def _evidence_launch(model: Path, args: argparse.Namespace, *, evidence: bool) -> LaunchFile:
    import hashlib  # noqa: PLC0415

    from vigil.nodes.ingest import IngestConfig  # noqa: PLC0415
    from vigil.nodes.loader import LoaderConfig, PinnedModel  # noqa: PLC0415
    from vigil.nodes.logger import LoggerConfig  # noqa: PLC0415
    from vigil.nodes.logger.store import StoreConfig  # noqa: PLC0415
    from vigil.nodes.worker import EngineConfig, Task, WorkerConfig  # noqa: PLC0415
    from vigil.testing.launchfiles import launch_file, node  # noqa: PLC0415

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
    from vigil.launch import Launcher, load  # noqa: PLC0415
    from vigil.nodes.logger.store import read_entries  # noqa: PLC0415
    from vigil.testing.launchfiles import write  # noqa: PLC0415

    folder = Path(tempfile.mkdtemp(prefix="ev-", dir=tmp))
    path = write(_evidence_launch(model, args, evidence=evidence), folder)
    run = RunDir(folder / "run")
    frames = [np.full((32, 32, 3), i * 30, dtype=np.uint8) for i in range(8)]
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        point = Point()

        async def go() -> None:
            async with AsyncClient(run.ipc("ingest"), name="bench") as client:
                warm = Point()  # every worker warm first
                await closed_loop(vigil_call(client, frames, warm), args.workers, 0.0, 1.0, warm)
                call = vigil_call(client, frames, point)
                await closed_loop(call, args.concurrency[0], args.warm, args.duration, point)

        asyncio.run(go())
    done, errors = point.done, point.errors
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
    from vigil.testing.modelgen import tiny_classifier  # noqa: PLC0415

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


def measure(
    server: Server, frames: list[np.ndarray], args: argparse.Namespace, concurrency: int
) -> Point:
    """One closed-loop point against a started server."""
    point = Point()
    sampler = PeakRss(server.tree)
    sampler.start()
    before = server.tree.cpu()

    async def go() -> None:
        if server.client is not None:  # the pipeline: one AsyncClient for the point
            async with AsyncClient(server.client, name="bench") as client:
                call = vigil_call(client, frames, point)
                await closed_loop(call, concurrency, args.warm, args.duration, point)
        else:
            await closed_loop(server.call(point), concurrency, args.warm, args.duration, point)

    asyncio.run(go())
    point.cpu = cpu_delta(before, server.tree.cpu())
    point.rss_mib = sampler.stop()
    point.pss_mib = sum(pss for _, _, pss in server.tree.memory().values())
    return point


def inprocess(model: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """The ceiling, in a process of its own: rates per batch, single-request latencies, and
    the CPU time and peak RSS that process reports of itself."""
    command = [sys.executable, str(_BENCH / "peers.py"), "inprocess"]
    command += [",".join(map(str, args.batches)), str(args.duration), str(args.singles)]
    with log.open("ab") as err:
        done = subprocess.run(
            command,
            env=_env(model, args.threads, args),
            stdout=subprocess.PIPE,
            stderr=err,
            check=True,
        )
    out: dict[str, Any] = json.loads(done.stdout)
    out["cpu_s_per_img"] = out["cpu_s"] / out["images"]
    return out


# -- summary ---------------------------------------------------------------------------------


def _median_spread(values: list[float]) -> tuple[float, float, float]:
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return float("nan"), float("nan"), float("nan")
    return float(np.median(clean)), min(clean), max(clean)


def summarise(
    points: dict[str, dict[int, list[dict[str, Any]]]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Median of each figure over repetitions, with the spread of img_s and p50."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for system, by_c in points.items():
        for c, rows in by_c.items():
            row: dict[str, Any] = {}
            for key in rows[0]:
                med, lo, hi = _median_spread([r[key] for r in rows])
                row[key] = round(med, 4 if key == "cpu_s_per_img" else 2)
                if key in ("img_s", "p50_ms"):
                    row[f"{key}_spread"] = [round(lo, 2), round(hi, 2)]
            row["reps"] = len(rows)
            out.setdefault(system, {})[str(c)] = row
    return out


def _print_row(system: str, c: int, row: dict[str, Any], rep: int) -> None:
    print(
        f"  rep {rep} {system:<9} c={c:<3} {row['img_s']:7.2f} img/s  p50 {row['p50_ms']:8.1f}"
        f"  p99 {row['p99_ms']:8.1f} ms  cpu {row['cpu_s_per_img'] * 1000:6.1f} ms/img"
        f"  rss {row['rss_mib']:6.0f} MiB  errors {row['errors']} {row.get('failures') or ''}",
        flush=True,
    )


def _plot(path: str, peers_table: dict[str, dict[str, dict[str, Any]]], ceiling: float) -> None:
    import matplotlib  # noqa: PLC0415 - optional, only for --png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, marker in zip(SERVED, "osD", strict=True):
        rows = peers_table.get(system)
        if rows:
            cs = sorted(rows, key=int)
            ax.plot(
                [int(c) for c in cs], [rows[c]["img_s"] for c in cs], marker=marker, label=system
            )
    ax.axhline(ceiling, color="grey", linestyle="--", label="in-process ceiling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title("ResNet-50 serving, same model, frames and thread budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _stage_summary(stages: list[tuple[int, ...]]) -> dict[str, float]:
    if not stages:
        return {}
    cols = np.asarray(stages, dtype=np.float64)
    names = ("socket", "batch_wait", "infer")
    out = {
        f"{n}_p50_ms": round(float(np.median(cols[:, i])) / 1000, 2) for i, n in enumerate(names)
    }
    out["mean_batch"] = round(float(cols[:, 3].mean()), 2)
    out["wide_share"] = round(float((cols[:, 4] > 1).mean()), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(prog="vigil bench serve", description=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--fp16", action="store_true", help="serve the float16 model")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--threads", type=int, default=cores, help="onnxruntime thread budget")
    parser.add_argument("--workers", type=int, default=1, help="pipeline worker processes")
    parser.add_argument("--max-batch", type=int, default=None, help="default: 4 (cpu), 32")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--litserve-workers", type=int, default=1)
    parser.add_argument("--gunicorn-workers", type=int, default=None, help="default: cores")
    parser.add_argument("--gunicorn-threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
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
    args.gunicorn_workers = args.gunicorn_workers or max(1, args.threads // args.gunicorn_threads)
    gpu = args.device == "cuda"
    # A GPU wants big batches and many requests in flight to fill them.
    args.max_batch = args.max_batch or (32 if gpu else 4)
    args.concurrency = args.concurrency or ([1, 16, 64, 128, 256] if gpu else [1, 4, 16, 64])
    if args.quick:
        args.duration = args.duration or 3.0
        args.warm, args.reps, args.singles, args.batches = 1.0, 1, 10, [1, 4]
    else:
        args.duration = args.duration or 10.0
        args.warm, args.singles = 3.0, 30
        args.batches = [1, 8, 32, 64, 128] if gpu else [1, 2, 4, 8]
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
    points: dict[str, dict[int, list[dict[str, Any]]]] = {}
    ready: dict[str, list[float]] = {}
    ceilings: list[dict[str, Any]] = []
    processes: list[dict[str, dict[str, float]]] = []
    stages: dict[int, list[tuple[int, ...]]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vb-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "servers.log"
        model = models.resnet50(tmp / "resnet50.onnx", fp16=args.fp16, seed=args.seed)
        print(
            f"ResNet-50 {'fp16' if args.fp16 else 'fp32'} on {args.device}, {cores} cores, "
            f"{args.threads} onnxruntime threads per system; "
            f"pipeline {args.workers} worker(s), max_batch {args.max_batch}, "
            f"max_queue_delay_us {args.max_queue_delay_us}; {args.reps} repetitions of "
            f"{args.duration:g} s per point; load average {load_before[0]:.2f}",
            flush=True,
        )
        for rep in range(1, args.reps + 1):
            # A B C D, then D C B A: a drift in the host's speed over the run weighs on every
            # system alike instead of on whichever comes last in each repetition.
            for system in args.systems if rep % 2 else args.systems[::-1]:
                if system == "inprocess":
                    found = inprocess(model, args, log)
                    ceilings.append(found)
                    rates = ", ".join(f"b{b} {r:.2f}" for b, r in found["rates"].items())
                    print(
                        f"  rep {rep} inprocess {rates} img/s; single p50 "
                        f"{np.median(found['single_ms']):.1f} ms",
                        flush=True,
                    )
                    continue
                if system == "pipeline":
                    starting = pipeline_server(model, args, frames, tmp, log)
                else:
                    starting = http_server(system, model, args, frames, log)
                with starting as server:
                    ready.setdefault(system, []).append(server.ready_s)
                    for c in args.concurrency:
                        point = measure(server, frames, args, c)
                        row = point.row(args.duration)
                        _print_row(system, c, {**row, "failures": point.failures}, rep)
                        points.setdefault(system, {}).setdefault(c, []).append(row)
                        if system == "pipeline":
                            stages.setdefault(c, []).extend(point.stages)
                            processes.append(
                                {
                                    "c": c,  # type: ignore[dict-item]
                                    "cpu_s_per_img": {
                                        k: v / max(point.completed, 1) for k, v in point.cpu.items()
                                    },
                                }
                            )
                    if system == "pipeline":
                        memory = server.tree.memory()
    load_after = os.getloadavg()
    table = summarise(points)
    summary: dict[str, Any] = {"peers": table}
    if ceilings:
        batches = {
            b: float(np.median([c["rates"][b] for c in ceilings])) for b in ceilings[0]["rates"]
        }
        best = max(batches, key=lambda b: batches[b])
        single = float(np.median([np.median(c["single_ms"]) for c in ceilings]))
        summary |= {
            "inprocess_img_s": round(batches[best], 2),
            "inprocess_best_batch": int(best),
            "inprocess": {b: round(r, 2) for b, r in batches.items()},
            "inprocess_single_p50_ms": round(single, 2),
            "inprocess_cpu_s_per_img": round(
                float(np.median([c["cpu_s_per_img"] for c in ceilings])), 4
            ),
            "inprocess_rss_mib": round(float(np.median([c["rss_mib"] for c in ceilings])), 1),
        }
    if "pipeline" in table:
        rows = table["pipeline"]
        best_c = max(rows, key=lambda c: rows[c]["img_s"])
        summary["pipeline_img_s"] = rows[best_c]["img_s"]
        summary["pipeline_best_concurrency"] = int(best_c)
        if ceilings and "1" in rows:
            summary["single_p50_ratio"] = round(
                rows["1"]["p50_ms"] / summary["inprocess_single_p50_ms"], 3
            )
        if ceilings:
            summary["pipeline_vs_inprocess"] = round(
                summary["pipeline_img_s"] / summary["inprocess_img_s"], 3
            )
        ratios = {}
        for peer in ("litserve", "gunicorn"):
            for c, row in table.get(peer, {}).items():
                if int(c) >= 4 and c in rows:
                    ratios[f"{peer}@{c}"] = round(rows[c]["img_s"] / row["img_s"], 3)
        summary["pipeline_vs_peers"] = ratios
        full = [p for p in processes if str(p["c"]) == best_c]
        per_process: dict[str, float] = {}
        for p in full:
            for k, v in p["cpu_s_per_img"].items():
                per_process.setdefault(k, [])  # type: ignore[arg-type]
                per_process[k].append(v)  # type: ignore[attr-defined]
        cpu_ms = {k: round(float(np.median(v)) * 1000, 3) for k, v in per_process.items()}
        worker_ms = sum(v for k, v in cpu_ms.items() if k.startswith("worker"))
        summary["pipeline_processes"] = {
            "cpu_ms_per_img_at_best_concurrency": cpu_ms,
            "rss_pss_mib": {
                f"{label}[{pid}]": [round(rss, 1), round(pss, 1)]
                for pid, (label, rss, pss) in memory.items()
            },
        }
        summary["nonworker_cpu_share"] = round((sum(cpu_ms.values()) - worker_ms) / worker_ms, 4)
        summary["pipeline_stages"] = {str(c): _stage_summary(s) for c, s in stages.items()}
    summary["ready_s"] = {s: round(float(np.median(v)), 2) for s, v in ready.items()}
    summary["config"] = {
        "model": "resnet50-fp16" if args.fp16 else "resnet50-fp32",
        "device": args.device,
        "cores": cores,
        "threads": args.threads,
        "pipeline_workers": args.workers,
        "max_batch": args.max_batch,
        "max_queue_delay_us": args.max_queue_delay_us,
        "litserve_workers": args.litserve_workers,
        "gunicorn_workers": args.gunicorn_workers,
        "gunicorn_threads": args.gunicorn_threads,
        "concurrency": args.concurrency,
        "reps": args.reps,
        "duration_s": args.duration,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    _report(summary)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=2))
    if args.png_path and "inprocess_img_s" in summary:
        _plot(args.png_path, table, summary["inprocess_img_s"])
    return 0


def _report(summary: dict[str, Any]) -> None:
    table = summary["peers"]
    print("\nmedian over repetitions (img/s | p50 ms | CPU ms/img | peak RSS MiB):")
    for system, rows in table.items():
        cells = "  ".join(
            f"c={c}: {r['img_s']:.2f} | {r['p50_ms']:.0f} | {r['cpu_s_per_img'] * 1000:.0f}"
            f" | {r['rss_mib']:.0f}"
            for c, r in sorted(rows.items(), key=lambda kv: int(kv[0]))
        )
        print(f"  {system:<9} {cells}")
    for key in (
        "inprocess_img_s",
        "inprocess_single_p50_ms",
        "pipeline_img_s",
        "pipeline_vs_inprocess",
        "single_p50_ratio",
        "nonworker_cpu_share",
        "pipeline_vs_peers",
        "ready_s",
    ):
        if key in summary:
            print(f"  {key}: {summary[key]}")


if __name__ == "__main__":
    sys.exit(main())
