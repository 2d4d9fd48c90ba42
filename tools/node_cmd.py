"""`vigil node`: the nodes of a running launch, from graph.json and their live heartbeats."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import click
import msgspec
import psutil
import zmq

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import GraphNode, RunGraph
from vigil.schemas import Topic
from vigil.tools._options import json_option, key_option, run_dir_option
from vigil.tools._tables import console, rows_with_detail
from vigil.tools._taps import BeatBook, BusTap, open_bus, open_run

__all__ = ["NodeRow", "ProcessSampler", "listen_for_beats", "node", "node_lines", "node_rows"]


class NodeRow(msgspec.Struct, kw_only=True):
    """One node as the tools show it: what the launcher wrote and what its heartbeat says."""

    name: str
    kind: str
    pid: int
    status: str
    """alive (beating), stopping, silent (process there, no beat heard), gone (no process)."""
    heartbeat_age_ms: float | None
    period_ms: int | None
    restarts: int
    detail: dict[str, str]
    cpu_percent: float | None = None
    rss_bytes: int | None = None


def listen_for_beats(bus: BusTap, window_s: float, expected: Iterable[str] = ()) -> BeatBook:
    """Heartbeats heard on `bus` within `window_s`; returns early once every `expected` node
    beat."""
    book = BeatBook()
    wanted = set(expected)
    deadline = time.monotonic() + window_s
    with (
        zmq.Context() as ctx,
        Subscriber(
            ctx, bus.sub, [Topic.HEARTBEAT], typed=False, curve=bus.curve, skip_replayed=True
        ) as sub,
    ):
        while (left := deadline - time.monotonic()) > 0:
            received = sub.recv(max(1, int(left * 1000)))
            if received is not None:
                book.add(received)
                if wanted and wanted <= set(book.beats):
                    break
    return book


class ProcessSampler:
    """CPU and memory of node processes; CPU is averaged since the previous sample."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> tuple[float | None, int | None]:
        """(CPU percent, resident bytes) of `pid`; Nones when it is gone or not ours to read."""
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # the first call only starts the measurement
                return None, proc.memory_info().rss
            return proc.cpu_percent(None), proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return None, None


def _status(n: GraphNode, book: BeatBook, pid: int) -> str:
    beat = book.beats.get(n.name)
    if beat is not None and beat.detail.get("lifecycle") == "stopping":
        return "stopping"
    exists = pid > 0 and psutil.pid_exists(pid)
    if beat is not None:
        return "alive" if exists or n.host else "gone"
    return "silent" if exists else "gone"


def node_rows(
    graph: RunGraph, book: BeatBook, sampler: ProcessSampler | None = None
) -> list[NodeRow]:
    """A row per node of the graph, plus any node heard beating that the graph lacks."""
    rows: list[NodeRow] = []
    for n in graph.nodes:
        beat = book.beats.get(n.name)
        pid = beat.pid if beat is not None else n.pid
        cpu, rss = sampler.sample(pid) if sampler is not None else (None, None)
        detail = dict(beat.detail) if beat is not None else {}
        rows.append(
            NodeRow(
                name=n.name,
                kind=n.kind,
                pid=pid,
                status=_status(n, book, pid),
                heartbeat_age_ms=book.age_ms(n.name),
                period_ms=beat.period_ms if beat is not None else None,
                restarts=n.restarts,
                detail=detail,
                cpu_percent=cpu,
                rss_bytes=rss,
            )
        )
    known = {n.name for n in graph.nodes}
    for name, beat in sorted(book.beats.items()):
        # The launcher beats too (the watchdog supervises it); it owns the graph, not a row.
        if name not in known and beat.kind != "launcher":
            cpu, rss = sampler.sample(beat.pid) if sampler is not None else (None, None)
            rows.append(
                NodeRow(
                    name=name,
                    kind=beat.kind,
                    pid=beat.pid,
                    status="alive (not in graph)",
                    heartbeat_age_ms=book.age_ms(name),
                    period_ms=beat.period_ms,
                    restarts=0,
                    detail=dict(beat.detail),
                    cpu_percent=cpu,
                    rss_bytes=rss,
                )
            )
    return rows


def _age(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f} ms"


def _detail(detail: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(detail.items()))


_WINDOW = click.option(
    "--window", type=float, default=1.0, help="Listen this long for heartbeats (seconds)."
)


@click.group("node")
def node() -> None:
    """The nodes of a running launch and their health."""


@node.command("list")
@run_dir_option
@key_option
@_WINDOW
@json_option
def list_nodes(run_dir: str | None, key: str | None, window: float, as_json: bool) -> None:
    """Every node: pid, kind, status, heartbeat age, restarts and heartbeat detail."""
    run = open_run(run_dir)
    graph = run.read_graph()
    book = listen_for_beats(open_bus(run, key), window, [n.name for n in graph.nodes])
    rows = node_rows(graph, book)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(rows)).decode())
        return
    for line in node_lines(rows, console().width):
        click.echo(line)


def node_lines(rows: list[NodeRow], width: int) -> list[str]:
    """Name, kind, pid, status, heartbeat age, restarts, and the heartbeat detail: last on
    the line when it fits in `width`, else beneath."""
    return rows_with_detail(
        ["NAME", "KIND", "PID", "STATUS", "HEARTBEAT", "RESTARTS"],
        [
            [r.name, r.kind, str(r.pid), r.status, _age(r.heartbeat_age_ms), str(r.restarts)]
            for r in rows
        ],
        [_detail(r.detail) for r in rows],
        width=width,
        right=frozenset({2, 4, 5}),
    )


@node.command("info")
@click.argument("name")
@run_dir_option
@key_option
@_WINDOW
def info(name: str, run_dir: str | None, key: str | None, window: float) -> None:
    """One node in full: process, heartbeat, topics, endpoints and its log file."""
    run = open_run(run_dir)
    graph = run.read_graph()
    found = [n for n in graph.nodes if n.name == name]
    if not found:
        known = ", ".join(n.name for n in graph.nodes)
        raise click.ClickException(f"no node {name!r} in {run.graph_path}; nodes: {known}")
    n = found[0]
    bus = open_bus(run, key)
    sampler = ProcessSampler()
    graph_one = msgspec.structs.replace(graph, nodes=[n])
    node_rows(graph_one, BeatBook(), sampler)  # starts the CPU measurement
    book = listen_for_beats(bus, window, [name])
    row = node_rows(graph_one, book, sampler)[0]
    click.echo(f"node: {n.name}")
    click.echo(f"kind: {n.kind} (instance {n.instance})")
    process = f"pid {row.pid}, {row.status}"
    if row.cpu_percent is not None:
        process += f", cpu {row.cpu_percent:.1f} %"
    if row.rss_bytes is not None:
        process += f", rss {row.rss_bytes / 2**20:.1f} MiB"
    click.echo(f"process: {process}")
    click.echo(f"restarts: {n.restarts}")
    if row.period_ms is not None:
        click.echo(f"heartbeat: {_age(row.heartbeat_age_ms)} ago, period {row.period_ms} ms")
    else:
        click.echo(f"heartbeat: none heard in {window:g} s")
    click.echo(f"detail: {_detail(row.detail) or '-'}")
    click.echo(f"publishes: {', '.join(n.publishes) or '-'}")
    click.echo(f"subscribes: {', '.join(n.subscribes) or '-'}")
    click.echo(f"endpoints: {json.dumps(n.endpoints) if n.endpoints else '-'}")
    click.echo(f"log: {run.path / 'logs' / (n.name + '.log')}")
