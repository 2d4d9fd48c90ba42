"""`vigil topic`: list, echo, measure, publish and describe live topics, like `ros2 topic`.

Every tool that reads the bus counts the publishers' sequence gaps and reports the messages
lost, on stderr when it ends, instead of hiding them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import click
import msgspec
import yaml
import zmq
from rich.table import Table

from vigil.bus.channel import validation_path
from vigil.bus.pubsub import Received, Subscriber
from vigil.bus.rundir import RunGraph
from vigil.errors import VigilError
from vigil.schemas import LATCHED_TOPICS, TOPICS, Message, Topic, schema_id
from vigil.tools._expr import ExpressionError, Filter, compile_filter
from vigil.tools._options import json_option, key_option, run_dir_option
from vigil.tools._tables import console, fixed, table, text
from vigil.tools._taps import (
    BusPublisher,
    Silence,
    SubscriptionWatch,
    TopicMeter,
    TopicRate,
    format_bytes,
    open_bus,
    open_run,
    summarise_tensors,
)

__all__ = ["MessageValueError", "decode_value", "schema_summary", "topic", "topics_table"]

# Topics that steer the pipeline: a value typed at a terminal must not change the safety state
# or the served model by accident.
_CONTROL_TOPICS: Final = frozenset({Topic.SAFETY_STATE, Topic.MODEL_ACTIVE, Topic.MODEL_COMMAND})


class MessageValueError(VigilError):
    """A value given to `vigil topic pub` is not a valid message of the topic's type."""

    def __init__(self, topic: str, path: str, rule: str, where: str = "") -> None:
        at = f" ({where})" if where else ""
        super().__init__(f"{topic}{at}: {rule}" + (f" - at `{path}`" if path else ""))
        self.topic = topic
        self.path = path
        self.rule = rule


def decode_value(topic: str, text: str, *, where: str = "") -> Message:
    """A YAML or JSON value as a message of `topic`'s catalogued type.

    MessageValueError names the `$.path` msgspec reports; the type tag may be left out.
    """
    cls = TOPICS.get(topic)
    if cls is None:
        raise MessageValueError(
            topic, "", f"not a catalogued topic; known: {', '.join(sorted(TOPICS))}", where
        )
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MessageValueError(topic, "$", f"not YAML or JSON: {exc}", where) from exc
    if not isinstance(raw, dict):
        raise MessageValueError(topic, "$", "expected a mapping of field: value", where)
    try:
        message: Message = msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        path, rule = validation_path(exc, cls)
        raise MessageValueError(topic, path or "$", rule, where) from exc
    return message


def _finish(sub: Subscriber) -> None:
    """Say what was lost (and malformed) on every topic; silence means nothing was."""
    for name, stats in sorted(sub.stats.items()):
        if stats.lost or stats.malformed:
            click.echo(
                f"# {name}: lost {stats.lost} messages (sequence gaps), "
                f"{stats.malformed} malformed",
                err=True,
            )


@click.group("topic")
def topic() -> None:
    """Inspect, measure and publish live topics of a running launch."""


@topic.command("list")
@run_dir_option
@json_option
def list_topics(run_dir: str | None, as_json: bool) -> None:
    """Every topic of the run, with its type and the nodes that publish/subscribe it."""
    graph = open_run(run_dir).read_graph()
    rows = [
        {
            "topic": name,
            "type": schema,
            "publishers": sorted(n.name for n in graph.nodes if name in n.publishes),
            "subscribers": sorted(n.name for n in graph.nodes if name in n.subscribes),
        }
        for name, schema in sorted(graph.topics.items())
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    console().print(topics_table(rows))


def topics_table(rows: list[dict[str, Any]]) -> Table:
    """Topic, type, publishers and subscribers; the node lists wrap."""
    out = table(fixed("topic"), fixed("type"), text("publishers"), text("subscribers"))
    for r in rows:
        out.add_row(
            r["topic"], r["type"], ", ".join(r["publishers"]) or "-",
            ", ".join(r["subscribers"]) or "-",
        )  # fmt: skip
    return out


def _dig(value: Any, path: str) -> Any:
    for step in path.split("."):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.lstrip("-").isdigit():
            try:
                value = value[int(step)]
            except IndexError:
                return None
        else:
            return None
    return value


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


class _CsvOut:
    """CSV rows whose columns are fixed by the first message (later extra fields are dropped)."""

    def __init__(self) -> None:
        self.columns: list[str] | None = None

    def __call__(self, row: dict[str, Any]) -> str:
        flat = dict(_flatten(row))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="")
        if self.columns is None:
            self.columns = list(flat)
            writer.writerow(self.columns)
            buf.write("\n")
        writer.writerow([_cell(flat.get(c)) for c in self.columns])
        return buf.getvalue()


def _echo_row(received: Received, fields: tuple[str, ...], full: bool) -> dict[str, Any]:
    env = received.envelope
    body = summarise_tensors(
        msgspec.to_builtins(received.body, enc_hook=repr),
        [f.buffer for f in received.buffers],
        full=full,
    )
    if fields:
        # Ids are bytes on the wire; they are printed in hex, as the W3C trace context spells
        # them and as `vigil log trace` takes them.
        envelope = {
            k: v.hex() if isinstance(v, bytes) else v
            for k, v in msgspec.structs.asdict(env).items()
        }
        return {f: _dig(envelope, f[2:]) if f.startswith("e.") else _dig(body, f) for f in fields}
    return {
        "topic": received.topic,
        "seq": env.seq,
        "source": env.source if not env.instance else f"{env.source}.{env.instance}",
        "stamp_ns": env.stamp_ns,
        "trace_id": env.trace_id.hex(),
        "body": body,
        "buffers": [len(b) for b in received.buffers],
    }


@topic.command("echo")
@click.argument("name")
@run_dir_option
@click.option("--once", is_flag=True, help="Print one message and exit.")
@click.option("-n", "--count", type=int, default=0, help="Exit after this many messages.")
@click.option("--timeout", type=float, default=0.0, help="Give up after this many seconds.")
@click.option(
    "--field",
    "fields",
    multiple=True,
    help="Print only this dotted body path; e.NAME is an envelope field (e.g. e.trace_id).",
)
@click.option("--raw", is_flag=True, help="With one --field, print a string without JSON quotes.")
@click.option("--filter", "expression", default=None, help="Keep messages where EXPR holds.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows instead of JSON lines.")
@click.option("--full", is_flag=True, help="Print tensor values instead of a summary.")
@key_option
def echo(  # noqa: PLR0917 - click passes every option as an argument
    name: str,
    run_dir: str | None,
    once: bool,
    count: int,
    timeout: float,
    fields: tuple[str, ...],
    expression: str | None,
    as_csv: bool,
    full: bool,
    key: str | None,
    raw: bool,
) -> None:
    """Print the messages on topic NAME: JSON lines (envelope and body) by default.

    --filter takes an expression over the body `m`, the envelope `e` and `topic`, e.g.
    `m.output.confidence > 0.5 and m.stream_id == "cam0"`. Tensors are summarised (dtype,
    shape, min/max/mean) unless --full. While nothing arrives, stderr says why when it can:
    no node publishes NAME, or the pipeline is refusing requests.
    """
    run = open_run(run_dir)
    bus = open_bus(run, key)
    try:
        graph: RunGraph | None = run.read_graph()
    except FileNotFoundError:
        graph = None
    silence = Silence(name, graph, time.monotonic())
    for note in silence.first_notes():
        click.echo(note, err=True)
    try:
        keep: Filter | None = compile_filter(expression) if expression else None
    except ExpressionError as exc:
        raise click.UsageError(str(exc)) from exc
    limit = 1 if once else count
    shown = 0
    deadline = time.monotonic() + timeout if timeout else None
    if as_csv:
        line: Callable[[dict[str, Any]], str] = _CsvOut()
    elif len(fields) == 1:
        only = fields[0]

        def line(row: dict[str, Any]) -> str:
            value = row[only]
            return value if raw and isinstance(value, str) else json.dumps(value)
    else:

        def line(row: dict[str, Any]) -> str:
            return json.dumps(row)

    watched = [t for t in Silence.WATCHED if t != name]
    with (
        zmq.Context() as ctx,
        Subscriber(ctx, bus.sub, [name, *watched], typed=False, curve=bus.curve) as sub,
    ):
        try:
            while not limit or shown < limit:
                wait = 200 if deadline is None else int((deadline - time.monotonic()) * 1000)
                if deadline is not None and wait <= 0:
                    raise click.ClickException(f"no message on {name} within {timeout} s")
                received = sub.recv(min(wait, 200))
                for note in silence.notes(time.monotonic()):
                    click.echo(note, err=True)
                if received is None:
                    continue
                if received.topic != name:
                    silence.see(received)
                    continue
                silence.heard(time.monotonic())
                if keep is not None and not keep(
                    m=received.body, e=msgspec.to_builtins(received.envelope), topic=received.topic
                ):
                    continue
                click.echo(line(_echo_row(received, fields, full)))
                shown += 1
        except KeyboardInterrupt:
            pass
        finally:
            if keep is not None and keep.skipped:
                click.echo(
                    f"# filter: {keep.skipped} messages could not be evaluated "
                    f"(last: {keep.last_problem})",
                    err=True,
                )
            _finish(sub)


def _measure(  # noqa: PLR0917 - the options every measuring command shares
    names: tuple[str, ...],
    run_dir: str | None,
    key: str | None,
    window: float,
    reports: int,
    show: Callable[[TopicRate], str],
) -> None:
    """Report each topic in `names` every `window` seconds (`reports` times, 0: until Ctrl-C)."""
    if window <= 0:
        raise click.UsageError("--window must be positive")
    bus = open_bus(open_run(run_dir), key)
    done = 0
    with (
        zmq.Context() as ctx,
        Subscriber(ctx, bus.sub, list(names), typed=False, curve=bus.curve) as sub,
    ):
        meter = TopicMeter(window)
        try:
            while not reports or done < reports:
                due = time.monotonic() + window
                while (left := due - time.monotonic()) > 0:
                    received = sub.recv(max(1, math.ceil(left * 1000)))
                    if received is not None:
                        meter.add(received)
                for rate in meter.rates(sub, names):
                    click.echo(show(rate))
                done += 1
        except KeyboardInterrupt:
            pass
        finally:
            _finish(sub)


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f} ms"


_WINDOW = click.option("--window", type=float, default=2.0, help="Seconds per report.")
_REPORTS = click.option("--reports", type=int, default=0, help="Exit after N reports (0: never).")


@topic.command("hz")
@click.argument("names", nargs=-1, required=True)
@run_dir_option
@key_option
@_WINDOW
@_REPORTS
def hz(
    names: tuple[str, ...], run_dir: str | None, key: str | None, window: float, reports: int
) -> None:
    """Report the message rate of each topic in NAMES, with messages lost."""
    _measure(
        names,
        run_dir,
        key,
        window,
        reports,
        lambda r: (
            f"{r.topic}: {r.rate_hz:.2f} Hz over {r.window_s:.1f} s ({r.messages} msgs), "
            f"interval min {_ms(r.min_interval_ms)} max {_ms(r.max_interval_ms)} "
            f"std {_ms(r.std_interval_ms)}, lost {r.lost}"
        ),
    )


@topic.command("bw")
@click.argument("names", nargs=-1, required=True)
@run_dir_option
@key_option
@_WINDOW
@_REPORTS
def bw(
    names: tuple[str, ...], run_dir: str | None, key: str | None, window: float, reports: int
) -> None:
    """Report the bandwidth of each topic in NAMES (all frames, tensors included)."""
    _measure(
        names,
        run_dir,
        key,
        window,
        reports,
        lambda r: (
            f"{r.topic}: {format_bytes(r.bytes_per_s)}/s over {r.window_s:.1f} s, "
            f"mean {format_bytes(r.mean_bytes)} per message ({r.messages} msgs), lost {r.lost}"
        ),
    )


@topic.command("delay")
@click.argument("names", nargs=-1, required=True)
@run_dir_option
@key_option
@_WINDOW
@_REPORTS
def delay(
    names: tuple[str, ...], run_dir: str | None, key: str | None, window: float, reports: int
) -> None:
    """Report the delay from each message's `stamp_ns` to its receipt here (p50/p99/max).

    Both are wall clocks: across hosts the figure includes their offset.
    """
    _measure(
        names,
        run_dir,
        key,
        window,
        reports,
        lambda r: (
            f"{r.topic}: delay p50 {_ms(r.delay_p50_ms)}, p99 {_ms(r.delay_p99_ms)}, "
            f"max {_ms(r.delay_max_ms)} over {r.messages} msgs, lost {r.lost}"
        ),
    )


def _graph_subscribers(graph: RunGraph | None, name: str) -> int:
    return sum(1 for n in graph.nodes if name in n.subscribes) if graph else 0


@topic.command("pub")
@click.argument("name")
@click.argument("value")
@run_dir_option
@click.option("-r", "--rate", type=float, default=1.0, help="Messages per second (0: at once).")
@click.option("-n", "--count", type=int, default=1, help="Times to publish VALUE (0: until ^C).")
@click.option("--wait-subscribers", type=int, default=1, help="Wait for N subscribers first.")
@click.option("--wait-timeout", type=float, default=10.0, help="Give up waiting after SECONDS.")
@click.option("--allow-control", is_flag=True, help="Allow safety/state and model/* topics.")
@key_option
def pub(  # noqa: PLR0917 - click passes every option as an argument
    name: str,
    value: str,
    run_dir: str | None,
    rate: float,
    count: int,
    wait_subscribers: int,
    wait_timeout: float,
    allow_control: bool,
    key: str | None,
) -> None:
    """Publish VALUE (YAML or JSON, decoded into NAME's type) on topic NAME.

    VALUE `-` reads one value per line from stdin, each published once at --rate.
    """
    if name in _CONTROL_TOPICS and not allow_control:
        raise click.UsageError(f"{name} steers the pipeline; pass --allow-control to publish on it")
    if rate < 0 or count < 0 or wait_subscribers < 0:
        raise click.UsageError("--rate, --count and --wait-subscribers must not be negative")
    try:
        if value == "-":
            messages: Iterator[Message] = (
                decode_value(name, text, where=f"stdin line {i}")
                for i, text in enumerate(sys.stdin, start=1)
                if text.strip()
            )
        else:
            first = decode_value(name, value)
            messages = (first for _ in (iter(int, 1) if count == 0 else range(count)))
        run = open_run(run_dir)
        tap = open_bus(run, key)
        try:
            graph: RunGraph | None = run.read_graph()
        except FileNotFoundError:
            graph = None
        watch = SubscriptionWatch({name: _graph_subscribers(graph, name)})
        sent = 0
        with (
            zmq.Context() as ctx,
            BusPublisher(
                ctx, tap.pub, source="vigil-topic-pub", watch=watch, curve=tap.curve
            ) as bus,
        ):
            if wait_subscribers:
                have = bus.wait_for(name, wait_subscribers, wait_timeout)
                if have < wait_subscribers:
                    raise click.ClickException(
                        f"{name} has {have} known subscriber(s) after {wait_timeout:g} s, "
                        f"waited for {wait_subscribers}"
                    )
            period_ns = int(1e9 / rate) if rate else 0
            due = time.monotonic_ns()
            try:
                for message in messages:
                    if sent and period_ns:
                        due += period_ns
                        while (left := due - time.monotonic_ns()) > 0:
                            bus.socket.poll(max(1, left // 1_000_000))
                            bus.watch.read(bus.socket)
                    seq = bus.publish(name, message)
                    sent += 1
                    click.echo(f"published #{seq} on {name} [{schema_id(type(message))}]")
            except KeyboardInterrupt:
                pass
            # Let what is queued reach the proxy, for a bounded time.
            bus.close(linger_ms=1000)
    except MessageValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _type_text(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        values = defs.get(name, {}).get("enum")
        return f"{name}({', '.join(str(v) for v in values)})" if values else name
    if "anyOf" in schema:
        return " | ".join(_type_text(s, defs) for s in schema["anyOf"])
    if "enum" in schema:
        return "enum(" + ", ".join(str(v) for v in schema["enum"]) + ")"
    kind = schema.get("type", "any")
    if kind == "array":
        if "prefixItems" in schema:
            return "tuple"
        return f"list[{_type_text(schema.get('items', {}), defs)}]"
    if kind == "object" and "additionalProperties" in schema:
        return f"dict[str, {_type_text(schema['additionalProperties'], defs)}]"
    return str(kind)


_LIMITS: Final = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
)


def _struct_lines(
    name: str, defs: dict[str, Any], depth: int, seen: frozenset[str]
) -> Iterator[str]:
    struct = defs.get(name, {})
    required = set(struct.get("required", []))
    for field_name, spec in struct.get("properties", {}).items():
        limits = ", ".join(f"{k} {spec[k]}" for k in _LIMITS if k in spec)
        if "items" in spec:
            limits = ", ".join(
                filter(
                    None,
                    [
                        limits,
                        *(f"items {k} {spec['items'][k]}" for k in _LIMITS if k in spec["items"]),
                    ],
                )
            )
        flag = "" if field_name in required else " (optional)"
        extra = f"  [{limits}]" if limits else ""
        yield f"{'  ' * depth}{field_name}: {_type_text(spec, defs)}{flag}{extra}"
        refs = [spec, spec.get("items", {}), *spec.get("anyOf", [])]
        for ref in refs:
            target = str(ref.get("$ref", "")).rsplit("/", 1)[-1] if isinstance(ref, dict) else ""
            if target and target in defs and target not in seen and depth < 3:
                yield from _struct_lines(target, defs, depth + 1, seen | {target})


def schema_summary(topic_name: str) -> list[str]:
    """The fields of a topic's type with their types and constraints, one per line."""
    cls = TOPICS[topic_name]
    schema = msgspec.json.schema(cls)
    defs: dict[str, Any] = schema.get("$defs", {})
    root = str(schema.get("$ref", "")).rsplit("/", 1)[-1] or cls.__name__
    return list(_struct_lines(root, defs, 0, frozenset({root})))


@topic.command("info")
@click.argument("name")
@run_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the JSON Schema of the type too.")
def info(name: str, run_dir: str | None, as_json: bool) -> None:
    """Describe topic NAME: its type, its fields and who publishes and subscribes it."""
    cls = TOPICS.get(name)
    if cls is None:
        raise click.ClickException(
            f"{name} is not a catalogued topic; known: {', '.join(sorted(TOPICS))}"
        )
    click.echo(f"topic: {name}")
    click.echo(f"type: {cls.__name__} [{schema_id(cls)}]")
    click.echo(f"latched: {'yes' if name in LATCHED_TOPICS else 'no'}")
    click.echo("fields:")
    for line in schema_summary(name):
        click.echo(f"  {line}")
    try:
        graph: RunGraph | None = open_run(run_dir).read_graph()
    except (click.ClickException, FileNotFoundError):
        graph = None
    if graph is None:
        click.echo("publishers/subscribers: no running launch found")
    else:
        for title, nodes in (
            ("publishers", [n for n in graph.nodes if name in n.publishes]),
            ("subscribers", [n for n in graph.nodes if name in n.subscribes]),
        ):
            click.echo(f"{title}: {len(nodes)}")
            for n in nodes:
                click.echo(f"  {n.name} ({n.kind}, pid {n.pid})")
    if as_json:
        click.echo(json.dumps(msgspec.json.schema(cls), indent=2))
