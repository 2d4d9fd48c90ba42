"""Hot-swap benchmark: switch latency across the worker pool and request latency during
switches against steady state, measured in the same run on the same pipeline.

A signed repository holds two versions of a small classifier; the benchmark re-points
`latest` back and forth while a closed-loop client keeps requests in flight. Switch latency is
timed from the loader's prepare (LOADING) to its COMMITTED event and from the link change to
COMMITTED. `--json PATH` writes switches, failed_requests, switch_ms (p50/p99),
p99_ms_during, p99_ms_steady.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.launch import Launcher, load
from vigil.models.repository import set_latest
from vigil.nodes.ingest import IngestConfig
from vigil.schemas import InferResult, ModelEvent, ModelStep, Topic
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import signed_pair
from vigil.testing.pipeline import classifier_serving

FRAME = np.full((32, 32, 3), 100, dtype=np.uint8)


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 2) if values else 0.0


def measure(folder: Path, switches: int, steady_s: float, in_flight: int, workers: int) -> dict:
    root, trusted, _ = signed_pair(folder)
    launch = launch_file(
        "swapbench",
        *classifier_serving(root, trusted, workers=workers),
        node("ingest", IngestConfig(default_deadline_ms=10000)),
    )
    path = write(launch, folder, "swap.yaml")
    run = RunDir(folder / "run")
    steady: list[float] = []
    during: list[float] = []
    switch_ms: list[float] = []
    link_ms: list[float] = []
    failed = 0
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        with (
            Client(run.ipc("ingest"), name="bench", ctx=launcher.ctx) as client,
            Subscriber(launcher.ctx, run.sub, [Topic.MODEL_EVENT]) as events,
        ):
            client.infer(FRAME, stream_id="b", frame_ts_us=1, deadline_s=30)
            poller = zmq.Poller()
            client.register(poller)
            poller.register(events.socket, zmq.POLLIN)
            sent: dict[int, int] = {}
            ts = 1
            phase = "steady"
            steady_until = time.monotonic() + steady_s
            done = 0
            want = "2"
            linked_ns = prepared_ns = 0
            while done < switches:
                while client.in_flight < in_flight:
                    ts += 1
                    seq = client.submit(FRAME, stream_id="b", frame_ts_us=ts, deadline_s=10)
                    sent[seq] = time.monotonic_ns()
                if phase == "steady" and time.monotonic() >= steady_until:
                    phase = "switching"
                    set_latest(root, "tiny", want)
                    linked_ns = time.monotonic_ns()
                ready = dict(poller.poll(50))
                if client.owns(ready):
                    while (reply := client.poll(0)) is not None:
                        seq, outcome = reply
                        ms = (time.monotonic_ns() - sent.pop(seq)) / 1e6
                        if not isinstance(outcome, InferResult):
                            failed += 1
                        (steady if phase == "steady" else during).append(ms)
                if ready.get(events.socket):
                    while (got := events.recv(0)) is not None:
                        body = got.body
                        if not isinstance(body, ModelEvent) or body.node != "loader":
                            continue
                        if body.step is ModelStep.LOADING and body.version == want:
                            prepared_ns = time.monotonic_ns()
                        elif body.step is ModelStep.COMMITTED and body.version == want:
                            now = time.monotonic_ns()
                            switch_ms.append((now - (prepared_ns or linked_ns)) / 1e6)
                            link_ms.append((now - linked_ns) / 1e6)
                            done += 1
                            want = "1" if want == "2" else "2"
                            set_latest(root, "tiny", want)
                            linked_ns, prepared_ns = time.monotonic_ns(), 0
                        elif body.step is ModelStep.ROLLED_BACK:
                            raise RuntimeError(f"switch rolled back: {body.detail}")
            while client.in_flight:
                reply = client.poll(10_000)
                if reply is None:
                    continue
                seq, outcome = reply
                failed += not isinstance(outcome, InferResult)
                during.append((time.monotonic_ns() - sent.pop(seq)) / 1e6)
    return {
        "switches": len(switch_ms),
        "failed_requests": failed,
        "switch_ms": {"p50": _pct(switch_ms, 50), "p99": _pct(switch_ms, 99)},
        "link_to_commit_ms": {"p50": _pct(link_ms, 50), "p99": _pct(link_ms, 99)},
        "p99_ms_during": _pct(during, 99),
        "p99_ms_steady": _pct(steady, 99),
        "p50_ms_during": _pct(during, 50),
        "p50_ms_steady": _pct(steady, 50),
        "requests_during": len(during),
        "requests_steady": len(steady),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vigil bench swap", description=__doc__)
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of steady state")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vg-swap-", dir="/tmp") as tmp:
        result = measure(Path(tmp), args.switches, args.steady, args.in_flight, args.workers)
    print(f"switches                 {result['switches']}")
    print(f"failed requests          {result['failed_requests']}")
    print(
        f"switch (prepare->commit) p50 {result['switch_ms']['p50']} ms, "
        f"p99 {result['switch_ms']['p99']} ms"
    )
    print(
        f"link change -> commit    p50 {result['link_to_commit_ms']['p50']} ms, "
        f"p99 {result['link_to_commit_ms']['p99']} ms"
    )
    print(
        f"request latency p50/p99  steady {result['p50_ms_steady']}/{result['p99_ms_steady']} ms"
        f" ({result['requests_steady']} requests), during switches "
        f"{result['p50_ms_during']}/{result['p99_ms_during']} ms ({result['requests_during']})"
    )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
