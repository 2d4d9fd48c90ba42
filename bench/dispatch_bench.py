"""Dispatch benchmark: plain PUSH round-robin against credit-based dispatch, same workers.

Two workers serve the same stream of jobs, one four times slower than the other (a throttled
or busier device). PUSH deals jobs round-robin to whoever is connected, so the slow worker
gets half of them and its queue sets the pace; with credit (what vigil's ingest does: each
worker asks for work, the most idle one gets the next job) the fast worker takes most.
Reports jobs/s, p50/p99 latency and the share each worker served; `--json PATH` writes them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

WORK_S = {"fast": 0.002, "slow": 0.008}


def _busy(seconds: float) -> None:
    """Occupy the worker for a job's service time (an event wait, so threads do not fight
    over the GIL the way a spin would)."""
    threading.Event().wait(seconds)


def _push_worker(
    ctx: zmq.Context, jobs: str, results: str, name: str, stop: threading.Event
) -> None:
    with ctx.socket(zmq.PULL) as pull, ctx.socket(zmq.PUSH) as push:
        pull.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.LINGER, 0)
        pull.connect(jobs)
        push.connect(results)
        while not stop.is_set():
            if pull.poll(50):
                job = pull.recv()
                _busy(WORK_S[name])
                push.send_multipart([job, name.encode()])


def _credit_worker(ctx: zmq.Context, endpoint: str, name: str, stop: threading.Event) -> None:
    with ctx.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        dealer.send_multipart([b"credit", b"2"])
        while not stop.is_set():
            if dealer.poll(50):
                job = dealer.recv()
                _busy(WORK_S[name])
                dealer.send_multipart([job, name.encode()])


def run_push(tmp: Path, count: int, rate: float) -> dict[str, object]:
    stop = threading.Event()
    jobs, results = f"ipc://{tmp}/jobs", f"ipc://{tmp}/results"
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push, ctx.socket(zmq.PULL) as pull:
        push.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.LINGER, 0)
        push.bind(jobs)
        pull.bind(results)
        workers = [
            threading.Thread(target=_push_worker, args=(ctx, jobs, results, n, stop))
            for n in WORK_S
        ]
        for w in workers:
            w.start()
        return _drive(push.send, pull, count, rate, stop, workers)


def run_credit(tmp: Path, count: int, rate: float) -> dict[str, object]:
    stop = threading.Event()
    endpoint = f"ipc://{tmp}/router"
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as router:
        router.setsockopt(zmq.LINGER, 0)
        router.bind(endpoint)
        workers = [
            threading.Thread(target=_credit_worker, args=(ctx, endpoint, n, stop)) for n in WORK_S
        ]
        for w in workers:
            w.start()
        credit: dict[bytes, int] = {}
        queue: list[bytes] = []
        done: list[list[bytes]] = []

        def pump(timeout_ms: int) -> None:
            if router.poll(timeout_ms):
                while True:
                    try:
                        identity, a, b = router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if a == b"credit":
                        credit[identity] = int(b)
                    else:
                        credit[identity] += 1
                        done.append([a, b])
            while queue and credit and max(credit.values()) > 0:
                worker = max(credit, key=lambda k: credit[k])  # the most idle worker
                credit[worker] -= 1
                router.send_multipart([worker, queue.pop(0)])

        class _Results:
            def poll(self, timeout: int) -> bool:
                pump(timeout)
                return bool(done)

            def recv_multipart(self) -> list[bytes]:
                return done.pop(0)

        while len(credit) < len(WORK_S):
            pump(50)

        def send(job: bytes) -> None:
            queue.append(job)
            pump(0)

        return _drive(send, _Results(), count, rate, stop, workers)


def _drive(  # noqa: PLR0917 - one driver for both dispatchers
    send, results, count, rate, stop, workers
) -> dict[str, object]:
    sent: dict[int, float] = {}
    latencies: list[float] = []
    served = dict.fromkeys(WORK_S, 0)
    start = time.perf_counter()
    i = 0
    while len(latencies) < count:
        now = time.perf_counter()
        while i < count and start + i / rate <= now:
            sent[i] = start + i / rate
            send(str(i).encode())
            i += 1
        wait_ms = 1 if i < count else 50
        if results.poll(wait_ms):
            job, name = results.recv_multipart()
            latencies.append((time.perf_counter() - sent.pop(int(job))) * 1000)
            served[name.decode()] += 1
    elapsed = time.perf_counter() - start
    stop.set()
    for w in workers:
        w.join()
    arr = np.asarray(latencies)
    return {
        "jobs_s": round(count / elapsed, 1),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
        "served": served,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vigil bench dispatch", description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=400.0, help="offered jobs/s")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vg-disp-", dir="/tmp") as tmp:
        push = run_push(Path(tmp), args.count, args.rate)
        credit = run_credit(Path(tmp), args.count, args.rate)
    capacity = sum(1 / s for s in WORK_S.values())
    fast, slow = WORK_S["fast"] * 1e3, WORK_S["slow"] * 1e3
    print(
        f"{args.count} jobs offered at {args.rate:.0f}/s; workers: fast {fast:.0f} ms, "
        f"slow {slow:.0f} ms per job (capacity {capacity:.0f}/s together)"
    )
    for name, r in (("PUSH round-robin", push), ("credit (vigil)", credit)):
        print(
            f"  {name:<18} {r['jobs_s']:>7} jobs/s  p50 {r['p50_ms']:>7} ms"
            f"  p99 {r['p99_ms']:>7} ms  served {r['served']}"
        )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"push": push, "credit": credit}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
