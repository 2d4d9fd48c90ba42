"""`vigil topic`: list, echo and measure the rate of live topics, like `ros2 topic`."""

from __future__ import annotations

import json
import time
from typing import Any

import click
import msgspec
import zmq

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir, find_run_dir

__all__ = ["topic"]


def _run_dir(explicit: str | None) -> RunDir:
    try:
        return find_run_dir(explicit)
    except FileNotFoundError as exc:
        raise click.ClickException(
            f"{exc}; start one with `vigil launch` or pass --run-dir"
        ) from exc


def _jsonable(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=repr)


@click.group("topic")
def topic() -> None:
    """Inspect live topics of a running launch."""


@topic.command("list")
@click.option("--run-dir", default=None)
@click.option("-t", "--show-types", is_flag=True, default=True, hidden=True)
def list_topics(run_dir: str | None, show_types: bool) -> None:
    """Every topic of the run, with its type and the nodes that publish/subscribe it."""
    graph = _run_dir(run_dir).read_graph()
    for name, schema in sorted(graph.topics.items()):
        pubs = sorted(n.name for n in graph.nodes if name in n.publishes)
        subs = sorted(n.name for n in graph.nodes if name in n.subscribes)
        click.echo(
            f"{name:<20} [{schema}]  pub: {', '.join(pubs) or '-'}  sub: {', '.join(subs) or '-'}"
        )


@topic.command("echo")
@click.argument("name")
@click.option("--run-dir", default=None)
@click.option("--once", is_flag=True, help="Print one message and exit.")
@click.option("-n", "--count", type=int, default=0, help="Exit after this many messages.")
@click.option("--timeout", type=float, default=0.0, help="Give up after this many seconds.")
def echo(name: str, run_dir: str | None, once: bool, count: int, timeout: float) -> None:
    """Print every message on topic NAME as a JSON line (envelope and body)."""
    run = _run_dir(run_dir)
    limit = 1 if once else count
    seen = 0
    deadline = time.monotonic() + timeout if timeout else None
    with zmq.Context() as ctx, Subscriber(ctx, run.sub, [name], typed=False) as sub:
        while not limit or seen < limit:
            wait = 200 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if deadline is not None and wait == 0:
                raise click.ClickException(f"no message on {name} within {timeout} s")
            received = sub.recv(wait)
            if received is None:
                continue
            env = received.envelope
            line = {
                "topic": received.topic,
                "seq": env.seq,
                "source": env.source,
                "stamp_ns": env.stamp_ns,
                "trace_id": env.trace_id.hex(),
                "body": _jsonable(received.body),
                "buffers": [len(b) for b in received.buffers],
            }
            click.echo(json.dumps(line))
            seen += 1
        if sub.lost:
            click.echo(f"# lost {sub.lost} messages (sequence gaps)", err=True)


@topic.command("hz")
@click.argument("names", nargs=-1, required=True)
@click.option("--run-dir", default=None)
@click.option("--window", type=float, default=2.0, help="Seconds per report.")
@click.option("--reports", type=int, default=0, help="Exit after this many reports (0: never).")
def hz(names: tuple[str, ...], run_dir: str | None, window: float, reports: int) -> None:
    """Report the message rate of each topic in NAMES, with messages lost."""
    run = _run_dir(run_dir)
    done = 0
    with zmq.Context() as ctx, Subscriber(ctx, run.sub, list(names), typed=False) as sub:
        start = time.monotonic()
        counts = {n: 0 for n in names}
        while not reports or done < reports:
            left = start + window - time.monotonic()
            if left <= 0:
                for n in names:
                    stats = sub.stats.get(n)
                    lost = stats.lost if stats else 0
                    click.echo(f"{n}: {counts[n] / window:.2f} Hz over {window:.1f} s, lost {lost}")
                counts = dict.fromkeys(names, 0)
                start = time.monotonic()
                done += 1
                continue
            received = sub.recv(int(left * 1000) + 1)
            if received is not None and received.topic in counts:
                counts[received.topic] += 1
