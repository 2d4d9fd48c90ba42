"""`vigil top`: a live view of a running launch — nodes, topics, the safety state, the models.

One subscriber to every topic feeds it all: heartbeats give each node's liveness and the model
version a worker serves (its heartbeat detail), the latched `safety/state` arrives at once, and
every message counts toward its topic's rate, bandwidth and losses (sequence gaps).
"""

from __future__ import annotations

import math
import time
from typing import Any

import click
import msgspec
import zmq
from rich.console import Group
from rich.live import Live
from rich.text import Text

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.schemas import Topic
from vigil.tools._options import json_option, key_option, run_dir_option
from vigil.tools._tables import console, fixed, table
from vigil.tools._taps import (
    BeatBook,
    TopicMeter,
    format_bytes,
    open_bus,
    open_run,
)
from vigil.tools.node_cmd import NodeRow, ProcessSampler, node_rows

__all__ = ["TopView", "top"]

_STATE_STYLE = {
    "NORMAL": "bold green",
    "DEGRADED": "bold yellow",
    "RECOVERING": "bold cyan",
    "SAFE_STOP": "bold red",
}
_NODE_STYLE = {"alive": "green", "stopping": "yellow", "silent": "bold red", "gone": "bold red"}


class TopView:
    """What `vigil top` keeps: the rolling topic meter, heartbeats, the state, process samples."""

    def __init__(self, run: RunDir, window_s: float) -> None:
        self.run = run
        self.meter = TopicMeter(window_s)
        self.beats = BeatBook()
        self.sampler = ProcessSampler()
        self.state: dict[str, Any] | None = None
        self.started = time.monotonic()

    def take(self, sub: Subscriber, timeout_ms: int) -> None:
        """Read what arrives within `timeout_ms` (and whatever is queued behind it)."""
        received = sub.recv(timeout_ms)
        while received is not None:
            self.meter.add(received)
            if received.topic == Topic.HEARTBEAT:
                self.beats.add(received)
            elif received.topic == Topic.SAFETY_STATE:
                body = msgspec.to_builtins(received.body)
                self.state = body if isinstance(body, dict) else None
            received = sub.recv(0)

    def nodes(self) -> list[NodeRow]:
        """Node rows with CPU and memory sampled now."""
        return node_rows(self.run.read_graph(), self.beats, self.sampler)

    def snapshot(self, sub: Subscriber) -> dict[str, Any]:
        """The view as data: what `--json` prints."""
        return {
            "run_dir": str(self.run.path),
            "safety": self.state,
            "lost": sum(s.lost for s in sub.stats.values()),
            "nodes": msgspec.to_builtins(self.nodes()),
            "topics": msgspec.to_builtins(self.meter.rates(sub)),
        }

    def render(self, sub: Subscriber) -> Group:
        """The whole view as rich renderables."""
        rows = self.nodes()
        state = self.state.get("state", "?") if self.state else "unknown (no watchdog heard)"
        header = Text.assemble(
            ("vigil top ", "bold"),
            f"{self.run.path}  ",
            ("safety ", "bold"),
            (str(state), _STATE_STYLE.get(str(state), "bold red")),
        )
        if self.state:
            header.append(f"  ({self.state.get('cause', '')})", style="dim")
        lost = sum(s.lost for s in sub.stats.values())
        header.append(f"  lost {lost}", style="bold red" if lost else "dim")

        nodes = table(
            fixed("node"), fixed("kind"), fixed("pid", right=True), fixed("status"),
            fixed("cpu", right=True), fixed("mem", right=True), fixed("beat", right=True),
            fixed("restarts", right=True), title="nodes",
        )  # fmt: skip
        for r in rows:
            nodes.add_row(
                r.name,
                r.kind,
                str(r.pid),
                Text(r.status, style=_NODE_STYLE.get(r.status, "")),
                "-" if r.cpu_percent is None else f"{r.cpu_percent:.0f} %",
                "-" if r.rss_bytes is None else f"{r.rss_bytes / 2**20:.0f} MiB",
                "-" if r.heartbeat_age_ms is None else f"{r.heartbeat_age_ms:.0f} ms",
                str(r.restarts),
            )

        topics = table(
            fixed("topic"), fixed("rate", right=True), fixed("bandwidth", right=True),
            fixed("delay p99", right=True), fixed("lost", right=True),
            fixed("malformed", right=True), title="topics",
        )  # fmt: skip
        for t in self.meter.rates(sub):
            topics.add_row(
                t.topic,
                f"{t.rate_hz:.1f} Hz",
                f"{format_bytes(t.bytes_per_s)}/s",
                "-" if math.isnan(t.delay_p99_ms) else f"{t.delay_p99_ms:.1f} ms",
                Text(str(t.lost), style="bold red" if t.lost else ""),
                str(t.malformed),
            )

        models = table(
            fixed("node"), fixed("model"), fixed("version"), fixed("generation"), title="models"
        )
        for r in rows:
            if "version" in r.detail:
                models.add_row(
                    r.name,
                    r.detail.get("model", "?"),
                    r.detail["version"],
                    r.detail.get("generation", "-"),
                )
        return Group(header, nodes, topics, models)


@click.command("top")
@run_dir_option
@click.option("--window", type=float, default=2.0, help="Seconds of traffic the rates cover.")
@click.option("--interval", type=float, default=1.0, help="Seconds between redraws.")
@click.option("--once", is_flag=True, help="Print one snapshot after --window seconds and exit.")
@key_option
@json_option
def top(  # noqa: PLR0917 - click passes every option as an argument
    run_dir: str | None, window: float, interval: float, once: bool, key: str | None, as_json: bool
) -> None:
    """A live view of nodes (pid, CPU, memory, heartbeat, restarts), topics (rate, bandwidth,
    losses), the safety state and the model version each worker serves.

    --json prints one snapshot as JSON after --window seconds (it implies --once).
    """
    if window <= 0 or interval <= 0:
        raise click.UsageError("--window and --interval must be positive")
    run = open_run(run_dir)
    bus = open_bus(run, key)
    view = TopView(run, window)
    out = console()
    with (
        zmq.Context() as ctx,
        Subscriber(
            ctx, bus.sub, [""], prefix=True, typed=False, curve=bus.curve, skip_replayed=True
        ) as sub,
    ):
        if once or as_json:
            view.nodes()  # starts the CPU measurement of every node
            deadline = time.monotonic() + window
            while (left := deadline - time.monotonic()) > 0:
                view.take(sub, max(1, int(left * 1000)))
            if as_json:
                click.echo(msgspec.json.format(msgspec.json.encode(view.snapshot(sub))).decode())
            else:
                out.print(view.render(sub))
            return
        try:
            with Live(view.render(sub), console=out, auto_refresh=False) as live:
                while True:
                    due = time.monotonic() + interval
                    while (left := due - time.monotonic()) > 0:
                        view.take(sub, max(1, int(left * 1000)))
                    live.update(view.render(sub), refresh=True)
        except KeyboardInterrupt:
            return
