"""The topic and node tools against a real, light launch: an ingest fed by the demo source."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner, Result

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.nodes.demo_sink import SinkConfig
from vigil.nodes.demo_source import SourceConfig
from vigil.nodes.ingest import IngestConfig
from vigil.schemas import DiagnosticEvent, Topic
from vigil.testing.launchfiles import launch_file, node, write
from vigil.tools.cli import cli

# No workers and no model: the ingest (told not to require one) admits every request (and
# publishes it on infer/request, image and all) and then answers it with a typed error, which
# is all these tools need to see.
LIGHT = launch_file(
    "taps",
    node("ingest", IngestConfig(default_deadline_ms=200, require_model=False)),
    node("sink", SinkConfig()),
    node(
        "source",
        SourceConfig(rate_hz=40, streams=1, invalid_every=0, height=32, width=48, deadline_ms=200),
    ),
)


@pytest.fixture(scope="module")
def light() -> Iterator[Launcher]:
    """The light launch, shared by every test of this module."""
    with tempfile.TemporaryDirectory(prefix="vg-", dir="/tmp") as tmp:
        path = write(LIGHT, Path(tmp))
        run = RunDir(Path(tmp) / "run")
        with Launcher(load(path, run.path), run) as launcher:
            launcher.start()
            yield launcher


def _vigil(launcher: Launcher, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, [*args, "--run-dir", str(launcher.run.path)], input=stdin, catch_exceptions=False
    )


def test_echo_summarises_the_tensor_of_a_request(light: Launcher) -> None:
    """`echo --once` prints one request as JSON with its image summarised, not dumped."""
    out = _vigil(light, "topic", "echo", Topic.INFER_REQUEST, "--once", "--timeout", "20")
    assert out.exit_code == 0, out.output
    message = json.loads(out.output.splitlines()[0])
    image = message["body"]["image"]
    assert image["dtype"] == "uint8" and image["shape"] == [32, 48, 3]
    assert 0 <= image["min"] <= image["mean"] <= image["max"] <= 255
    assert message["buffers"] == [32 * 48 * 3]


def test_echo_filters_and_picks_fields(light: Launcher) -> None:
    """`--filter` keeps only matching messages and `--field` prints the dotted path."""
    out = _vigil(
        light,
        "topic",
        "echo",
        Topic.HEARTBEAT,
        "-n",
        "3",
        "--timeout",
        "20",
        "--filter",
        'm.kind == "ingest" and m.period_ms >= 100',
        "--field",
        "node",
    )
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == ['"ingest"'] * 3


def test_echo_writes_csv_with_a_header(light: Launcher) -> None:
    """`--csv` writes a header row and then one row per message."""
    out = _vigil(
        light,
        "topic",
        "echo",
        Topic.HEARTBEAT,
        "-n",
        "2",
        "--timeout",
        "20",
        "--csv",
        "--field",
        "node",
        "--field",
        "pid",
    )
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "node,pid" and len(lines) == 3


def test_echo_refuses_an_unsafe_filter(light: Launcher) -> None:
    """A filter that calls anything beyond the whitelist is refused before anything runs."""
    out = _vigil(light, "topic", "echo", Topic.HEARTBEAT, "--filter", "__import__('os')")
    assert out.exit_code == 2
    assert "only abs, len may be called" in out.output


def test_hz_bw_and_delay_report_several_topics(light: Launcher) -> None:
    """hz, bw and delay each report every topic asked for, with its losses."""
    outputs = {}
    for tool in ("hz", "bw", "delay"):
        out = _vigil(
            light,
            "topic",
            tool,
            Topic.HEARTBEAT,
            Topic.INFER_REQUEST,
            "--window",
            "0.5",
            "--reports",
            "1",
        )
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        assert [line.split(":")[0] for line in lines] == [Topic.HEARTBEAT, Topic.INFER_REQUEST]
        assert all("lost" in line for line in lines)
        outputs[tool] = lines[0]
    assert float(outputs["hz"].split(":")[1].split("Hz")[0]) > 0
    assert float(outputs["bw"].split(":")[1].split("B")[0].split()[0]) > 0
    assert float(outputs["delay"].split("p50")[1].split("ms")[0]) >= 0


def test_pub_waits_for_a_subscriber_and_decodes_the_value(light: Launcher) -> None:
    """`pub` publishes a typed message once the test's subscriber is known to the proxy."""
    with zmq.Context() as ctx, Subscriber(ctx, light.run.sub, [Topic.DIAGNOSTIC]) as sub:
        out = _vigil(
            light,
            "topic",
            "pub",
            Topic.DIAGNOSTIC,
            '{code: DIA-2047, severity: ERROR, node: cli, message: "from the terminal"}',
            "--wait-subscribers",
            "1",
        )
        assert out.exit_code == 0, out.output
        # The pipeline publishes diagnostics of its own on this topic: find the one from pub.
        deadline = time.monotonic() + 60
        received = None
        while received is None or received.envelope.source != "vigil-topic-pub":
            assert time.monotonic() < deadline, "pub's message never arrived"
            received = sub.recv(200)
    assert received is not None
    assert isinstance(received.body, DiagnosticEvent)
    assert received.body.message == "from the terminal"
    assert received.envelope.source == "vigil-topic-pub"


def test_pub_reads_stdin_lines_and_names_a_bad_field(light: Launcher) -> None:
    """From stdin each line is a message; a bad one is a typed error naming line and path."""
    lines = "{code: DIA-2047, severity: ERROR, node: cli, message: ok}\n{code: 5}\n"
    out = _vigil(
        light, "topic", "pub", Topic.DIAGNOSTIC, "-", "--wait-subscribers", "0", stdin=lines
    )
    assert out.exit_code == 1
    assert "published #1" in out.output
    assert "stdin line 2" in out.output and "`$.code`" in out.output


def test_pub_without_subscribers_gives_up(light: Launcher) -> None:
    """Waiting for a subscriber that never comes ends with an error, nothing published."""
    out = _vigil(
        light,
        "topic",
        "pub",
        Topic.AUDIT,
        "{event: 1002, node: cli}",
        "--wait-timeout",
        "0.3",
    )
    assert out.exit_code == 1
    assert "0 known subscriber(s)" in out.output


def test_pub_refuses_control_topics(light: Launcher) -> None:
    """The safety state cannot be published from a terminal by accident."""
    out = _vigil(light, "topic", "pub", Topic.SAFETY_STATE, "{}")
    assert out.exit_code == 2
    assert "--allow-control" in out.output


def test_info_describes_type_fields_and_nodes(light: Launcher) -> None:
    """`info` names the type, its constrained fields and who publishes and subscribes."""
    out = _vigil(light, "topic", "info", Topic.INFER_RESULT)
    assert out.exit_code == 0, out.output
    assert "type: InferResult [infer.result]" in out.output
    assert "stream_id: string" in out.output and "maxLength 64" in out.output
    assert "publishers: 1\n  ingest (ingest" in out.output
    assert "subscribers: 1\n  sink (demo_sink" in out.output


def test_node_list_and_info_show_live_heartbeats(light: Launcher) -> None:
    """`node list` shows every node alive with a recent heartbeat; `info` shows one in full."""
    out = _vigil(light, "node", "list", "--json", "--window", "5")
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)}
    assert set(rows) == {"proxy", "ingest", "sink", "source"}
    for row in rows.values():
        assert row["status"] == "alive", row
        assert row["heartbeat_age_ms"] is not None and row["heartbeat_age_ms"] < 5000
        assert row["restarts"] == 0
    assert "loop_age_ms" in rows["ingest"]["detail"]
    info = _vigil(light, "node", "info", "ingest")
    assert info.exit_code == 0, info.output
    assert "kind: ingest" in info.output and "heartbeat: " in info.output
    assert f"pid {rows['ingest']['pid']}, alive" in info.output


def test_top_once_prints_nodes_and_topics(light: Launcher) -> None:
    """`top --once` prints one snapshot of nodes, topics and the safety state."""
    out = _vigil(light, "top", "--once", "--window", "0.5")
    assert out.exit_code == 0, out.output
    for text in ("nodes", "topics", "models", "ingest", Topic.INFER_REQUEST, "safety"):
        assert text in out.output
