"""`vigil bag check`: a recording replayed through a fresh pipeline, as a regression test.

The launch file is brought up in a temporary run directory without its `demo_source` nodes (the
recording's inputs replace them). Once every worker serves a model, each recorded
`infer/request` is sent again as a client request to the ingest — the recorded image buffer,
shape, stream id, frame timestamp, priority and trace id — and each reply (a result, or a typed
error) becomes a replayed output. The outputs are compared with the recorded ones by
`vigil.tools.bag.compare` within the tolerances.

Only outputs whose request is in the recording can be reproduced, so recorded outputs without
a recorded request (requests rejected before the ingest published them, a recording that
started mid-flight, the watchdog's own health probes) are left out of the comparison and
counted in the statistics instead, never silently.

What is compared is what the model decides: results and the errors a model or a request
causes. Outcomes that depend on the load of the moment — `UNAVAILABLE` (shedding),
`DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` — on either side set that output aside; they are
counted in `ReplayStats.load_dependent`, not reported as regressions, unless
`include_load_dependent` asks for them to be compared too.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
import zmq

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir, resolve_endpoint
from vigil.client import Client
from vigil.launch import Launcher, load
from vigil.launch.model import LaunchPlan
from vigil.schemas import ErrorCode, InferResult, Topic
from vigil.tools.bag._mcap import BagError, BagMessage
from vigil.tools.bag.compare import (
    DEFAULT_TOLERANCES,
    CheckReport,
    Tolerances,
    compare,
    load_tolerances,
    read_bag_io,
)

__all__ = [
    "LOAD_DEPENDENT",
    "CheckConfig",
    "LoadDependent",
    "NotServing",
    "ReplayStats",
    "check_recording",
    "run_check",
]

# The watchdog's known-answer probe: a request of the pipeline to itself, not an input.
PROBE_STREAM: Final = "vigil.health-probe"
_NS: Final = 1_000_000_000
# Error codes that say how loaded the pipeline was, not what the model decided.
LOAD_DEPENDENT: Final = frozenset(
    {ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED}
)


class NotServing(BagError):
    """The pipeline under test never had every worker serving a model."""

    def __init__(self, missing: Sequence[str], timeout_s: float) -> None:
        super().__init__(
            f"workers not serving after {timeout_s:g} s: {', '.join(missing) or 'no ingest'}"
        )
        self.missing = list(missing)
        self.timeout_s = timeout_s


class CheckConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a recording is replayed for a check."""

    in_flight: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 8
    # Generous on purpose: a slower machine must not turn results into DEADLINE_EXCEEDED.
    deadline_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # 0 sends as fast as `in_flight` allows; 1 keeps the recorded schedule, 2 twice as fast.
    pace: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    serving_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    exclude_streams: tuple[str, ...] = (PROBE_STREAM,)
    # Compare load-dependent outcomes (see LOAD_DEPENDENT) like any other output.
    include_load_dependent: bool = False


class LoadDependent(msgspec.Struct, frozen=True, kw_only=True):
    """Outputs set aside because one side ended with a load-dependent error."""

    recorded: dict[str, int] = {}
    """Load-dependent error code -> outputs of the recording that ended with it."""
    replayed: dict[str, int] = {}
    """The same for the replay."""
    outputs: list[str] = []
    """The outputs (`stream_id frame_ts_us`) left out of the comparison."""


class ReplayStats(msgspec.Struct, frozen=True, kw_only=True):
    """What the replay did, beside the comparison itself."""

    requests: int
    """Recorded requests replayed."""
    results: int
    errors: int
    skipped_outputs: int
    """Recorded outputs left out: their request is not in the recording."""
    serving: dict[str, str]
    """Worker -> `model version` it served during the replay."""
    launch_s: float
    replay_s: float
    load_dependent: LoadDependent = LoadDependent()


_DEFAULT: Final = CheckConfig()


@dataclass(frozen=True, slots=True)
class _Output:
    topic: str
    body: Any


def _key(body: Any) -> tuple[str, int] | None:
    if not isinstance(body, dict):
        return None
    stream, ts = body.get("stream_id"), body.get("frame_ts_us")
    return (stream, ts) if isinstance(stream, str) and isinstance(ts, int) else None


def _load_code(topic: str, body: Any) -> str | None:
    """The load-dependent error code an output ended with, if it did."""
    if topic != Topic.INFER_ERROR or not isinstance(body, dict):
        return None
    code = body.get("code")
    return code if code in LOAD_DEPENDENT else None


def _set_aside(
    recorded: list[BagMessage], replayed: list[_Output]
) -> tuple[list[BagMessage], list[_Output], LoadDependent]:
    """Both sides without the outputs that either side ended with a load-dependent error."""
    aside: set[tuple[str, int] | None] = set()

    def count(outputs: Sequence[BagMessage | _Output]) -> dict[str, int]:
        found: dict[str, int] = {}
        for output in outputs:
            code = _load_code(output.topic, output.body)
            if code is not None:
                found[code] = found.get(code, 0) + 1
                aside.add(_key(output.body))
        return found

    counts = (count(recorded), count(replayed))
    kept_recorded = [m for m in recorded if _key(m.body) not in aside]
    kept_replayed = [o for o in replayed if _key(o.body) not in aside]
    named = sorted(f"{k[0]} {k[1]}" for k in aside if k is not None)
    return (
        kept_recorded,
        kept_replayed,
        LoadDependent(recorded=counts[0], replayed=counts[1], outputs=named),
    )


def _frame(message: BagMessage) -> npt.NDArray[Any]:
    image = message.body["image"]
    dtype = np.dtype(image["dtype"])
    count = int(np.prod(image["shape"]))
    buffer = message.buffers[int(image.get("buffer", 0))]
    array = np.frombuffer(buffer, dtype, count, int(image.get("offset", 0)))
    return array.reshape(image["shape"])


def _tolerances(tolerances: Tolerances | str | Path | None) -> Tolerances:
    if tolerances is None:
        return DEFAULT_TOLERANCES
    if isinstance(tolerances, Tolerances):
        return tolerances
    return load_tolerances(tolerances)


@contextmanager
def _run_dir() -> Iterator[RunDir]:
    # ipc paths are limited to 107 bytes: keep the run directory short where /tmp exists.
    base = "/tmp" if os.path.isdir("/tmp") else None
    with tempfile.TemporaryDirectory(prefix="vigil-check-", dir=base) as tmp:
        yield RunDir(Path(tmp) / "run")


def _without_sources(plan: LaunchPlan) -> LaunchPlan:
    return msgspec.structs.replace(
        plan, processes=[p for p in plan.processes if p.spec.kind != "demo_source"]
    )


def _wait_serving(
    ctx: zmq.Context[zmq.Socket[bytes]], launcher: Launcher, timeout_s: float
) -> dict[str, str]:
    """Block until every worker's heartbeat names the model it serves; returns them."""
    workers = {p.label for p in launcher.plan.processes if p.spec.kind == "worker"}
    serving: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    with Subscriber(ctx, launcher.run.sub, [Topic.HEARTBEAT], skip_replayed=True) as sub:
        while not workers <= set(serving):
            left = deadline - time.monotonic()
            if left <= 0:
                raise NotServing(sorted(workers - set(serving)), timeout_s)
            # The launcher keeps supervising while the models load (a crash restarts a node).
            launcher.supervise(0)
            received = sub.recv(int(min(left, 0.2) * 1000) + 1)
            detail = getattr(received.body, "detail", {}) if received is not None else {}
            node = getattr(received.body, "node", "") if received is not None else ""
            if node in workers and "version" in detail:
                serving[node] = f"{detail.get('model', '?')} {detail['version']}"
    return serving


def _replay(
    client: Client, inputs: Sequence[BagMessage], config: CheckConfig
) -> tuple[list[_Output], int, int]:
    """Send every input, keep at most `in_flight` outstanding; returns outputs and counts."""
    keys: dict[int, tuple[str, int]] = {}
    outputs: list[_Output] = []
    results = errors = 0

    def take(timeout_ms: float) -> None:
        nonlocal results, errors
        reply = client.poll(timeout_ms)
        if reply is None:
            return
        seq, outcome = reply
        stream, ts = keys.pop(seq, ("", 0))
        if isinstance(outcome, InferResult):
            results += 1
            outputs.append(_Output(Topic.INFER_RESULT, msgspec.to_builtins(outcome)))
        else:
            errors += 1
            # A client-side deadline error knows nothing of the frame: name it from the request.
            body = msgspec.structs.replace(outcome.reply, stream_id=stream, frame_ts_us=ts)
            outputs.append(_Output(Topic.INFER_ERROR, msgspec.to_builtins(body)))

    t0 = time.monotonic_ns()
    origin = inputs[0].log_time_ns if inputs else 0
    for message in inputs:
        if config.pace:
            due = t0 + int((message.log_time_ns - origin) / config.pace)
            while (left := due - time.monotonic_ns()) > 0:
                take(left / 1e6)
        while client.in_flight >= config.in_flight:
            take(config.deadline_s * 1000)
        env = message.envelope
        recorded = env.trace
        trace = recorded.child() if recorded is not None else None
        seq = client.submit(
            _frame(message),
            stream_id=message.body["stream_id"],
            frame_ts_us=message.body["frame_ts_us"],
            deadline_s=config.deadline_s,
            trace=trace,
            priority=env.priority,
            model=message.body.get("model", ""),
        )
        keys[seq] = (message.body["stream_id"], message.body["frame_ts_us"])
    while client.in_flight:
        take(config.deadline_s * 1000)
    return outputs, results, errors


def run_check(
    recording: str | Path | Sequence[str | Path],
    launch_file: str | Path,
    tolerances: Tolerances | str | Path | None = None,
    config: CheckConfig = _DEFAULT,
    *,
    arguments: Mapping[str, str] | None = None,
) -> tuple[CheckReport, ReplayStats]:
    """Replay `recording` through a fresh pipeline from `launch_file` (with its launch
    `arguments`); the comparison report and what the replay did. ConfigError for a bad launch
    or tolerance file, BagError for an unreadable recording, NotServing when the pipeline
    never serves."""
    paths = [recording] if isinstance(recording, str | Path) else list(recording)
    rules = _tolerances(tolerances)
    recorded_in, recorded_out = read_bag_io([str(p) for p in paths], rules)
    inputs = [
        m
        for m in recorded_in
        if m.topic == Topic.INFER_REQUEST
        and isinstance(m.body, dict)
        and m.body.get("stream_id") not in config.exclude_streams
    ]
    sent = {_key(m.body) for m in inputs}
    reference = [m for m in recorded_out if _key(m.body) in sent]
    with ExitStack() as stack:
        run = stack.enter_context(_run_dir())
        plan = _without_sources(load(launch_file, run.path, arguments=arguments))
        ingest = next((p for p in plan.processes if p.spec.kind == "ingest"), None)
        if ingest is None:
            raise NotServing([], config.serving_timeout_s)
        started = time.monotonic()
        launcher = stack.enter_context(Launcher(plan, run))
        launcher.start()
        ctx = launcher.ctx
        serving = _wait_serving(ctx, launcher, config.serving_timeout_s)
        launched = time.monotonic()
        endpoint = resolve_endpoint(run, ingest.config.frontend)
        with Client(endpoint, name="bag-check", ctx=ctx) as client:
            replayed, results, errors = _replay(client, inputs, config)
        finished = time.monotonic()
    aside = LoadDependent()
    if not config.include_load_dependent:
        reference, replayed, aside = _set_aside(reference, replayed)
    report = compare(reference, replayed, rules)
    stats = ReplayStats(
        requests=len(inputs),
        results=results,
        errors=errors,
        skipped_outputs=len(recorded_out) - len(reference),
        serving=serving,
        launch_s=launched - started,
        replay_s=finished - launched,
        load_dependent=aside,
    )
    return report, stats


def check_recording(
    recording: str | Path | Sequence[str | Path],
    launch_file: str | Path,
    tolerances: Tolerances | str | Path | None = None,
) -> CheckReport:
    """Replay `recording` through a fresh pipeline from `launch_file` and compare the outputs
    with the recorded ones; `report.passed` is False on any regression (for pytest)."""
    return run_check(recording, launch_file, tolerances)[0]
