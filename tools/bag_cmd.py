"""The `vigil bag` command group: record, info, play and check."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import FrameType

import click
import msgspec
import zmq
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from vigil.bus.curve import CurveConfig, applies
from vigil.bus.rundir import RunDir, find_run_dir
from vigil.errors import VigilError
from vigil.launch import parse_assignments
from vigil.schemas import CONTROL_TOPICS
from vigil.tools._options import json_option, key_option, run_dir_option
from vigil.tools._taps import open_bus, tap_curve
from vigil.tools.bag.check import CheckConfig, run_check
from vigil.tools.bag.compare import format_report
from vigil.tools.bag.convert import convert_bags
from vigil.tools.bag.info import bag_info, format_info
from vigil.tools.bag.play import PlayConfig, Player, parse_remap
from vigil.tools.bag.record import (
    RecordConfig,
    Recorder,
    RecordStats,
    host_metadata,
    launch_metadata,
)

__all__ = ["bag"]

_SignalHandler = Callable[[int, FrameType | None], object] | int | None


def _handler(action: Callable[[], None]) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        action()

    return handle


@contextmanager
def _signals(handlers: dict[signal.Signals, Callable[[], None]]) -> Iterator[None]:
    """Install handlers for the duration of a command and put the old ones back."""
    previous: dict[signal.Signals, _SignalHandler] = {}
    for sig, action in handlers.items():
        previous[sig] = signal.signal(sig, _handler(action))
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _explicit_curve(endpoint: str, run_dir: str | None, key: str | None) -> CurveConfig | None:
    """The Curve keys for an --endpoint: a tcp one takes the server's public key from the
    graph of the run (--run-dir, $VIGIL_RUN_DIR or ./run/current) when there is one."""
    if not applies(endpoint):
        return None
    try:
        server_key = find_run_dir(run_dir).read_graph().server_key
    except FileNotFoundError:
        server_key = ""
    return tap_curve(endpoint, server_key, key)


def _endpoint(
    explicit: str | None, run_dir: str | None, key: str | None, side: str
) -> tuple[str, CurveConfig | None, RunDir | None]:
    """The proxy endpoint to use, its Curve keys and the run directory it came from (None
    when explicit)."""
    if explicit:
        return explicit, _explicit_curve(explicit, run_dir, key), None
    try:
        found = find_run_dir(run_dir)
    except FileNotFoundError as exc:
        raise click.UsageError(f"{exc}; pass --run-dir or --endpoint") from exc
    bus = open_bus(found, key)
    return (bus.sub if side == "sub" else bus.pub), bus.curve, found


@click.group("bag")
def bag() -> None:
    """Record bus traffic to MCAP bags, inspect them and play them back."""


class _LiveLine:
    """The one-line live view of a recording: rates, drops and files."""

    def __init__(self, live: Live) -> None:
        self._live = live
        self._last = (time.monotonic_ns(), 0, 0)

    def __call__(self, stats: RecordStats) -> None:
        now = time.monotonic_ns()
        then, messages, size = self._last
        dt = max(1e-9, (now - then) / 1e9)
        self._last = (now, stats.recorded, stats.bytes)
        rate = (stats.recorded - messages) / dt
        mbps = (stats.bytes - size) / dt / 1e6
        style = "bold red" if stats.lost else "green"
        line = Text.assemble(
            ("● rec ", "red"),
            f"{rate:9.0f} msg/s  {mbps:7.2f} MB/s  ",
            (f"drops {stats.lost}", style),
            f"  malformed {stats.malformed}  total {stats.recorded} msgs "
            f"{stats.bytes / 1e6:.1f} MB  files {len(stats.files)}",
            f"  snapshots {stats.snapshots}" if stats.snapshots else "",
        )
        self._live.update(line, refresh=True)


@bag.command("record")
@click.argument("topics", nargs=-1)
@click.option("-a", "--all", "all_topics", is_flag=True, help="Record every topic (the default).")
@click.option("-e", "--regex", "include", multiple=True, help="Record topics matching REGEX.")
@click.option("-x", "--exclude", multiple=True, help="Skip topics matching REGEX.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Bag file (.mcap).")
@run_dir_option
@click.option("--endpoint", help="Subscribe here instead of the run's proxy.")
@key_option
@click.option("-b", "--max-bag-size", type=int, default=0, help="Split at BYTES (0: never).")
@click.option("-d", "--max-bag-duration", type=float, default=0.0, help="Split every SECONDS.")
@click.option("--compression", type=click.Choice(["zstd", "lz4", "none"]), default="zstd")
@click.option(
    "--encoding",
    type=click.Choice(["msgpack", "json"]),
    default="msgpack",
    help="json: what Foxglove and `mcap cat --json` decode, with images and boxes.",
)
@click.option(
    "--images",
    type=click.Choice(["raw", "png", "jpeg"]),
    default="raw",
    help="With --encoding json: frames as foxglove.RawImage, or compressed.",
)
@click.option("--chunk-size", type=int, default=1 << 20, help="Chunk size in bytes.")
@click.option(
    "--flush-interval", type=float, default=1.0, help="Close a chunk at least every SECONDS."
)
@click.option("--fsync", is_flag=True, help="fsync every chunk (power-loss safe, slower).")
@click.option("--snapshot-mode", is_flag=True, help="Keep a ring; write it on SIGUSR1.")
@click.option("--snapshot-duration", type=float, default=30.0, help="Ring length in seconds.")
@click.option("--snapshot-size", type=int, default=256 << 20, help="Ring size in bytes.")
@click.option("--snapshot-on", multiple=True, help="Also write the ring on a message on TOPIC.")
@click.option(
    "--duration", type=click.FloatRange(min=0), default=0.0, help="Stop after SECONDS (0: never)."
)
@click.option("-q", "--quiet", is_flag=True, help="No live line.")
def record(  # noqa: PLR0917 - click passes every option as an argument
    topics: tuple[str, ...],
    all_topics: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    output: str | None,
    run_dir: str | None,
    endpoint: str | None,
    key: str | None,
    max_bag_size: int,
    max_bag_duration: float,
    compression: str,
    encoding: str,
    images: str,
    chunk_size: int,
    flush_interval: float,
    fsync: bool,
    snapshot_mode: bool,
    snapshot_duration: float,
    snapshot_size: int,
    snapshot_on: tuple[str, ...],
    duration: float,
    quiet: bool,
) -> None:
    """Record TOPICS, or those matching --regex, from the bus proxy until Ctrl-C or --duration.

    With neither, every topic is recorded.
    """
    sub, curve, found = _endpoint(endpoint, run_dir, key, "sub")
    try:
        config = msgspec.convert(
            {
                "output": output or time.strftime("bag_%Y%m%d-%H%M%S.mcap"),
                "topics": topics,
                "all_topics": all_topics or not (topics or include),
                "include": include,
                "exclude": exclude,
                "max_bag_size": max_bag_size,
                "max_bag_duration_s": max_bag_duration,
                "compression": compression,
                "encoding": encoding,
                "images": images,
                "chunk_size": chunk_size,
                "flush_interval_s": flush_interval,
                "fsync": fsync,
                "snapshot": snapshot_mode,
                "snapshot_duration_s": snapshot_duration,
                "snapshot_max_bytes": snapshot_size,
                "snapshot_on": snapshot_on,
                "duration_s": duration,
            },
            RecordConfig,
        )
    except msgspec.ValidationError as exc:
        raise click.UsageError(str(exc)) from exc
    metadata = {"vigil.host": host_metadata()}
    if found is not None:
        launch = launch_metadata(found)
        if launch:
            metadata["vigil.launch"] = launch
    console = Console(stderr=True)
    with (
        zmq.Context() as ctx,
        Recorder(config, sub, metadata=metadata, curve=curve) as recorder,
        _signals(
            {
                signal.SIGINT: recorder.request_stop,
                signal.SIGTERM: recorder.request_stop,
                signal.SIGUSR1: recorder.request_snapshot,
            }
        ),
        Live(Text("waiting for messages..."), console=console, auto_refresh=False)
        if not quiet
        else nullcontext() as live,
    ):
        stats = recorder.run(ctx, report=_LiveLine(live) if live is not None else None)
    console.print(
        f"recorded {stats.recorded} messages, {stats.bytes / 1e6:.1f} MB, {stats.lost} dropped, "
        f"{stats.malformed} malformed, into {', '.join(stats.files) or 'no file'}"
    )


@bag.command("convert")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option(
    "--encoding", type=click.Choice(["json", "msgpack"]), default="json", show_default=True
)
@click.option("--images", type=click.Choice(["raw", "png", "jpeg"]), default="raw")
@click.option("--compression", type=click.Choice(["zstd", "lz4", "none"]), default="zstd")
def convert(
    paths: tuple[str, ...], output: str, encoding: str, images: str, compression: str
) -> None:
    """Rewrite the bags PATHS (one, or a split recording) into OUTPUT in another encoding:
    json opens in Foxglove with images and detections."""
    if any(Path(p).resolve() == Path(output).resolve() for p in paths):
        raise click.UsageError("OUTPUT must not be one of the input bags")
    try:
        stats = convert_bags(
            list(paths),
            output,
            encoding=encoding,  # type: ignore[arg-type]  # click.Choice checked it
            images=images,  # type: ignore[arg-type]
            compression=compression,  # type: ignore[arg-type]
        )
    except VigilError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"wrote {stats.messages} messages and {stats.derived} derived Foxglove messages "
        f"from {stats.files_read} file(s) to {output} ({encoding})"
    )


@bag.command("info")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@json_option
def info(paths: tuple[str, ...], as_json: bool) -> None:
    """Summarise bags: topics, message counts, times, compression and metadata."""
    try:
        infos = [bag_info(p) for p in paths]
    except VigilError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(infos)).decode())
        return
    click.echo("\n\n".join(format_info(i) for i in infos))


@bag.command("play")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-r", "--rate", type=float, default=1.0, help="Speed factor (2: twice as fast).")
@click.option("-l", "--loop", is_flag=True, help="Play again from the start until Ctrl-C.")
@click.option("--start-offset", type=float, default=0.0, help="Skip the first SECONDS.")
@click.option("--duration", type=float, default=0.0, help="Play only SECONDS (0: all).")
@click.option("-t", "--topic", "--topics", "topics", multiple=True, help="Play only TOPIC.")
@click.option("-e", "--regex", "include", multiple=True, help="Play topics matching REGEX.")
@click.option("-x", "--exclude", multiple=True, help="Skip topics matching REGEX.")
@click.option(
    "--exclude-topic", "--exclude-topics", "exclude_topics", multiple=True, help="Skip TOPIC."
)
@click.option("--remap", multiple=True, help="Publish OLD topic as NEW (OLD:=NEW).")
@click.option("--wait-for-subscribers", is_flag=True, help="Start once every topic has one.")
@click.option("--wait-timeout", type=float, default=10.0, help="Give up waiting after SECONDS.")
@run_dir_option
@click.option("--endpoint", help="Publish to this proxy input instead of the run's.")
@click.option("--bind", "bind_endpoint", help="Bind ENDPOINT and publish there (no proxy).")
@key_option
@click.option(
    "--spin-us", type=int, default=1000, help="Spin this long before each deadline (timing)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def play(  # noqa: PLR0917 - click passes every option as an argument
    paths: tuple[str, ...],
    rate: float,
    loop: bool,
    start_offset: float,
    duration: float,
    topics: tuple[str, ...],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    exclude_topics: tuple[str, ...],
    remap: tuple[str, ...],
    wait_for_subscribers: bool,
    wait_timeout: float,
    run_dir: str | None,
    endpoint: str | None,
    bind_endpoint: str | None,
    key: str | None,
    spin_us: int,
    quiet: bool,
) -> None:
    """Publish bags on the bus on their recorded schedule and report the timing fidelity.

    Every message goes out marked as this replay's: the nodes of a running pipeline leave
    replayed control topics out of their state, and its logger seals what it takes as replay.
    """
    curve: CurveConfig | None = None
    run: RunDir | None = None
    if bind_endpoint:
        # A bound player serves its own endpoint: no proxy to connect to, so no keys.
        target = bind_endpoint
    else:
        target, curve, run = _endpoint(endpoint, run_dir, key, "pub")
    try:
        config = msgspec.convert(
            {
                "rate": rate,
                "loop": loop,
                "start_offset_s": start_offset,
                "duration_s": duration,
                "topics": topics,
                "include": include,
                "exclude": exclude,
                "exclude_topics": exclude_topics,
                "remap": parse_remap(remap),
                "wait_for_subscribers": wait_for_subscribers,
                "wait_timeout_s": wait_timeout,
                "bind": bool(bind_endpoint),
                "spin_us": spin_us,
            },
            PlayConfig,
        )
    except (msgspec.ValidationError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]playing"),
        BarColumn(),
        TextColumn("{task.fields[at]:>8.2f} s / {task.fields[span]:.2f} s"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        # A refresh thread would take the GIL at moments the schedule does not choose.
        auto_refresh=False,
    )
    try:
        with (
            zmq.Context() as ctx,
            Player(config, list(paths), target, curve=curve) as player,
            _signals({signal.SIGINT: player.request_stop, signal.SIGTERM: player.request_stop}),
            progress,
        ):
            if not bind_endpoint:
                _warn_control(console, player, run)
            span = player.span_ns
            task = progress.add_task("play", total=max(span, 1), at=0.0, span=span / 1e9)

            shown = [0]

            def advance(done_ns: int, span_ns: int) -> None:
                # Redrawing per message would cost more than the schedule's slack.
                now = time.monotonic_ns()
                if now - shown[0] >= 100_000_000 or done_ns >= span_ns:
                    shown[0] = now
                    progress.update(task, completed=done_ns, at=done_ns / 1e9, refresh=True)

            report = player.run(ctx, progress=advance)
    except VigilError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(report.summary())


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counts.items())) or "none"


def _warn_control(console: Console, player: Player, run: RunDir | None) -> None:
    """Say which control topics are about to go into a bus that live nodes may read."""
    control = sorted(t for t in player.topics if t in CONTROL_TOPICS)
    if not control:
        return
    where = f"the running pipeline of {run.path}" if run is not None else "the bus"
    console.print(
        f"[bold yellow]warning:[/] publishing control topics into {where}: "
        f"{', '.join(control)}. They go out marked as replay {player.replay:x}: live nodes "
        "leave them out of their state and the logger seals them as replay. Leave them out "
        "with --exclude-topic TOPIC or -x REGEX.",
        highlight=False,
    )


@bag.command("check")
@click.argument("paths", nargs=-1, required=True, metavar="PATHS... [NAME:=VALUE]...")
@click.option(
    "--launch",
    "launch_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The pipeline to check (its demo_source nodes are left out).",
)
@click.option("--tolerances", type=click.Path(exists=True, dir_okay=False), help="YAML file.")
@click.option("--in-flight", type=int, default=8, help="Requests outstanding at once.")
@click.option("--deadline", type=float, default=10.0, help="Deadline of each request (s).")
@click.option("--pace", type=float, default=0.0, help="1: recorded schedule; 0: flat out.")
@click.option(
    "--include-load-dependent",
    is_flag=True,
    help="Also compare UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED outcomes "
    "(by default they are counted apart: they depend on load, not on the model).",
)
@json_option
def check(  # noqa: PLR0917 - click passes every option as an argument
    paths: tuple[str, ...],
    launch_file: str,
    tolerances: str | None,
    in_flight: int,
    deadline: float,
    pace: float,
    include_load_dependent: bool,
    as_json: bool,
) -> None:
    """Replay the requests recorded in PATHS through a fresh pipeline from --launch (given its
    arguments as NAME:=VALUE) and compare its outputs with the recorded ones; exit 1 on any
    regression."""
    bags, arguments = parse_assignments(paths)
    for path in bags:
        if not Path(path).is_file():
            raise click.BadParameter(f"no bag file {path!r}", param_hint="PATHS")
    try:
        config = msgspec.convert(
            {
                "in_flight": in_flight,
                "deadline_s": deadline,
                "pace": pace,
                "include_load_dependent": include_load_dependent,
            },
            CheckConfig,
        )
    except msgspec.ValidationError as exc:
        raise click.UsageError(str(exc)) from exc
    started = time.monotonic()
    try:
        report, stats = run_check(bags, launch_file, tolerances, config, arguments=arguments)
    except VigilError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(
            msgspec.json.format(msgspec.json.encode({"report": report, "replay": stats})).decode()
        )
    else:
        served = ", ".join(f"{w}: {v}" for w, v in sorted(stats.serving.items()))
        click.echo(
            f"replayed {stats.requests} requests -> {stats.results} results, {stats.errors} "
            f"errors in {stats.replay_s:.2f} s (pipeline up in {stats.launch_s:.2f} s; "
            f"{served}); {stats.skipped_outputs} recorded outputs had no recorded request; "
            f"total {time.monotonic() - started:.2f} s"
        )
        aside = stats.load_dependent
        if aside.outputs:
            click.echo(
                f"{len(aside.outputs)} outputs set aside as load-dependent (recorded: "
                f"{_codes(aside.recorded)}; replayed: {_codes(aside.replayed)}); "
                "--include-load-dependent compares them"
            )
        click.echo(format_report(report))
    if not report.passed:
        sys.exit(1)
