"""The demo source node: camera frames at a set rate, some deliberately invalid, through the
client API; it keeps the tally the demo summary reports."""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vigil.bus.rundir import resolve_endpoint
from vigil.client import Client
from vigil.errors import (
    DeadlineExceeded,
    InvalidArgument,
    RequestError,
    ResourceExhausted,
    Unavailable,
)
from vigil.nodes._runtime import Node
from vigil.nodes._scene import render_scene
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.demo_source._contract import KIND, SourceConfig, endpoints
from vigil.nodes.demo_source._pacing import Adaptive, Fixed, Pace
from vigil.schemas import InferResult

__all__ = ["run"]


class Fault(enum.Enum):
    """The ways the source breaks a frame on purpose; each must come back INVALID_ARGUMENT."""

    WRONG_CHANNELS = "wrong_channels"
    STALE_TIMESTAMP = "stale_timestamp"
    TOO_LARGE = "too_large"
    WRONG_DTYPE = "wrong_dtype"
    GARBAGE_BODY = "garbage_body"


@dataclass
class Tally:
    """What became of every frame the source sent."""

    sent: int = 0
    sent_invalid: int = 0
    skipped: int = 0
    answered: int = 0
    rejected: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    boxes: int = 0


@dataclass(frozen=True, slots=True)
class _Sent:
    """A request on its way: when it left, whether it was broken on purpose, its frame."""

    at_ns: int
    invalid: bool
    stream: str
    ts: int


# Replies that say the pipeline has more than it can serve now: the source backs off.
_OVERLOAD = (ResourceExhausted, DeadlineExceeded, Unavailable)


class _Source:
    def __init__(self, node: Node, config: SourceConfig) -> None:
        self.node = node
        self.config = config
        self.client: Client = node.enter(
            Client(
                [resolve_endpoint(node.run, e) for e in endpoints(config)],
                name=node.args.label,
                ctx=node.ctx,
            )
        )
        self.client.register(node.poller)
        self.frames = [render_scene(i, config.height, config.width) for i in range(config.scenes)]
        now = node.clock()
        self.pace: Pace = (
            Fixed(config.rate_hz, now, config.max_in_flight)
            if config.pacing is None
            else Adaptive(config.pacing, config.rate_hz, config.deadline_ms * 1_000_000, now)
        )
        self.tally = Tally()
        self.sent_at: dict[int, _Sent] = {}
        self.last_ts: dict[str, int] = {}
        # Per stream, the newest timestamp of a frame that came back with a result: the
        # ingest accepted it, so repeating it is stale for sure.
        self.accepted_ts: dict[str, int] = {}
        self.count = 0
        self.faults = list(Fault)

    def send_due(self) -> None:
        now = self.node.clock()
        limit = min(self.config.max_in_flight, self.pace.in_flight_limit)
        for _ in range(self.pace.due(now, self.client.in_flight)):
            if self.client.in_flight >= limit:
                # Open loop: a frame that cannot go now is skipped, as a camera would.
                self.tally.skipped += 1
                continue
            self._send_one(now)

    def _send_one(self, now: int) -> None:
        index = self.count
        self.count += 1
        stream = f"cam{index % self.config.streams}"
        ts = max(self.last_ts.get(stream, 0) + 1, now // 1000)
        frame = self.frames[index % len(self.frames)]
        every = self.config.invalid_every
        fault = (
            self.faults[(index // every) % len(self.faults)]
            if every and index % every == (every - 1)
            else None
        )
        deadline_s = self.config.deadline_ms / 1000
        self.tally.sent += 1
        self.tally.sent_invalid += fault is not None
        try:
            if fault is None:
                self.last_ts[stream] = ts
                seq = self.client.submit(
                    frame, stream_id=stream, frame_ts_us=ts, deadline_s=deadline_s
                )
            else:
                seq = self._send_invalid(fault, frame, stream, ts, deadline_s)
        except RequestError as exc:
            # Refused before it left (no connection to the ingest, or its queue is full).
            if isinstance(exc, _OVERLOAD):
                self.pace.overloaded(now)
            self._count_error(exc.code)
            return
        self.sent_at[seq] = _Sent(now, fault is not None, stream, ts)

    def _send_invalid(
        self, fault: Fault, frame: npt.NDArray[np.uint8], stream: str, ts: int, deadline_s: float
    ) -> int:
        if fault is Fault.GARBAGE_BODY:
            return self.client.submit_raw(b"\xc1\xff not msgpack", [], deadline_s=deadline_s)
        bad: npt.NDArray[np.uint8] = frame
        accepted = self.accepted_ts.get(stream)
        if fault is Fault.WRONG_CHANNELS or (fault is Fault.STALE_TIMESTAMP and accepted is None):
            bad = np.ascontiguousarray(frame[:, :, :2])
        elif fault is Fault.STALE_TIMESTAMP and accepted is not None:
            ts = accepted  # a repeat of a timestamp the ingest accepted
        elif fault is Fault.TOO_LARGE:
            bad = np.zeros((1200, 64, 3), dtype=np.uint8)
        elif fault is Fault.WRONG_DTYPE:
            return self.client.submit(
                frame.astype(np.float32),  # wrong on purpose
                stream_id=stream,
                frame_ts_us=ts,
                deadline_s=deadline_s,
            )
        return self.client.submit(bad, stream_id=stream, frame_ts_us=ts, deadline_s=deadline_s)

    def on_replies(self) -> None:
        while (reply := self.client.poll(0)) is not None:
            seq, outcome = reply
            sent = self.sent_at.pop(seq, None)
            if sent is None:
                continue
            now = self.node.clock()
            if isinstance(outcome, InferResult) and not sent.invalid:
                self.tally.answered += 1
                self.tally.boxes += len(outcome.output.boxes)
                self.tally.latencies_ms.append((now - sent.at_ns) / 1e6)
                self.pace.answered(now, now - sent.at_ns)
                self.accepted_ts[sent.stream] = max(self.accepted_ts.get(sent.stream, 0), sent.ts)
            elif isinstance(outcome, InvalidArgument) and sent.invalid:
                self.tally.rejected += 1
            else:
                if isinstance(outcome, _OVERLOAD):
                    self.pace.overloaded(now)
                self._count_error(
                    outcome.code if isinstance(outcome, RequestError) else "UNREJECTED"
                )

    def _count_error(self, code: str) -> None:
        self.tally.errors += 1
        self.tally.error_codes[code] = self.tally.error_codes.get(code, 0) + 1

    def timeout_ms(self) -> float:
        return self.pace.wait_ns(self.node.clock()) / 1e6

    def write_report(self) -> None:
        lat = np.asarray(self.tally.latencies_ms or [0.0])
        report = {
            "sent": self.tally.sent,
            "sent_invalid": self.tally.sent_invalid,
            "skipped": self.tally.skipped,
            "answered": self.tally.answered,
            "rejected": self.tally.rejected,
            "errors": self.tally.errors,
            "error_codes": self.tally.error_codes,
            "unanswered": len(self.sent_at),
            "boxes": self.tally.boxes,
            "latency_ms": {
                "p50": float(np.percentile(lat, 50)),
                "p99": float(np.percentile(lat, 99)),
            },
            "pacing": self.pace.report(),
        }
        path = self.node.resolve(self.config.report)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, path)


def run(config: SourceConfig, args: NodeArgs) -> ExitCode:
    """Send frames until SIGTERM/SIGINT, then wait for every outstanding reply and report."""
    with Node(args) as node:
        source = _Source(node, config)
        node.ready(KIND.contract(config))
        while not node.stopping:
            events = node.poll(source.timeout_ms())
            if source.client.owns(events):
                source.on_replies()
            source.send_due()
        # Drain: every request ends with a reply or the client's own deadline error.
        while source.client.in_flight:
            node.poll(50)
            source.on_replies()
        source.on_replies()
        source.tally.errors += len(source.sent_at)
        source.write_report()
        node.log.info("node.stopping", reason=node.stop_reason, sent=source.tally.sent)
    return ExitCode.OK
