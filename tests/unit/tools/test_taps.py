"""Where the tap tools connect: the run's graph endpoints, and Curve keys on a tcp bus."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec
import pytest
import zmq.auth

from vigil.bus.curve import CurveConfig
from vigil.bus.envelope import Envelope
from vigil.bus.pubsub import Received
from vigil.bus.rundir import GraphNode, RunDir, RunGraph
from vigil.tools._taps import BusTap, Silence, open_bus

TCP = {"pub": "tcp://10.0.0.1:7650", "sub": "tcp://10.0.0.1:7651"}


def _run(folder: Path, endpoints: dict[str, str] | None, server_key: str = "") -> RunDir:
    run = RunDir(folder / "run")
    if endpoints is not None:
        run.write_graph(
            RunGraph(
                launch_file="x.yaml",
                launcher_pid=1,
                started_ns=0,
                endpoints=endpoints,
                topics={},
                server_key=server_key,
            )
        )
    return run


def _keys(folder: Path) -> tuple[str, str]:
    """(server public certificate, client key pair) made as `vigil keys gen` does."""
    server, _ = zmq.auth.create_certificates(str(folder), "server")
    _, client = zmq.auth.create_certificates(str(folder), "client")
    return server, client


def test_without_a_graph_the_tools_use_the_run_directory(short_tmp: Path) -> None:
    """A run with no graph.json yet: the ipc endpoints of its directory, no keys."""
    run = _run(short_tmp, None)
    assert open_bus(run, None) == BusTap(pub=run.pub, sub=run.sub)


def test_an_ipc_bus_needs_no_key_and_ignores_one(short_tmp: Path) -> None:
    """On ipc the run directory's mode is the access control: a key given is not used."""
    run = _run(short_tmp, {"pub": "ipc:///r/pub.sock", "sub": "ipc:///r/sub.sock"})
    assert open_bus(run, "/no/such.key_secret") == BusTap(
        pub="ipc:///r/pub.sock", sub="ipc:///r/sub.sock"
    )


def test_a_tcp_bus_gets_the_graph_server_key_and_the_client_key(short_tmp: Path) -> None:
    """On tcp the tools connect where the graph says, as Curve clients of its server key."""
    server, client = _keys(short_tmp)
    bus = open_bus(_run(short_tmp, TCP, server), client)
    assert bus == BusTap(
        pub=TCP["pub"], sub=TCP["sub"], curve=CurveConfig(server_key=server, client_secret=client)
    )


def test_a_tcp_bus_without_a_key_says_what_to_pass(short_tmp: Path) -> None:
    """No key for a tcp bus is refused up front, naming --key and $VIGIL_KEY."""
    server, _ = _keys(short_tmp)
    with pytest.raises(click.ClickException, match=r"pass --key FILE \(or set \$VIGIL_KEY\)"):
        open_bus(_run(short_tmp, TCP, server), None)


def test_a_graph_without_a_server_key_is_refused(short_tmp: Path) -> None:
    """A tcp graph that names no server key (an older launcher's) cannot be connected to."""
    _, client = _keys(short_tmp)
    with pytest.raises(click.ClickException, match="no public key of the bus server"):
        open_bus(_run(short_tmp, TCP), client)


def test_an_unusable_key_file_is_refused(short_tmp: Path) -> None:
    """A key path that holds no key pair is named before any socket is made."""
    server, _ = _keys(short_tmp)
    with pytest.raises(click.ClickException, match="cannot connect to tcp://"):
        open_bus(_run(short_tmp, TCP, server), server)


def test_graphs_written_before_the_server_key_still_decode(short_tmp: Path) -> None:
    """An old graph.json without `server_key` reads with it empty."""
    run = _run(short_tmp, TCP)
    raw = msgspec.json.decode(run.graph_path.read_bytes())
    del raw["server_key"]
    run.graph_path.write_bytes(msgspec.json.encode(raw))
    assert run.read_graph().server_key == ""


def _received(topic: str, body: dict[str, object]) -> Received:
    envelope = Envelope(schema="test", seq=1, source="test")
    return Received(topic=topic, envelope=envelope, body=body, buffers=[], frames=[], size=0)


def _graph(publishes: list[str]) -> RunGraph:
    node = GraphNode(name="worker", kind="worker", instance=1, pid=1, publishes=publishes)
    return RunGraph(
        launch_file="x", launcher_pid=1, started_ns=0, endpoints={}, topics={}, nodes=[node]
    )


def test_silence_says_at_once_when_nothing_publishes_the_topic() -> None:
    """A topic no node of the graph publishes is named before any wait."""
    quiet = Silence("infer/result", _graph([]), now=0.0)
    assert quiet.first_notes() == [
        "# no node of this launch publishes infer/result; waiting anyway"
    ]
    assert Silence("infer/result", _graph(["infer/result"]), now=0.0).first_notes() == []
    assert Silence("infer/result", None, now=0.0).first_notes() == []


def test_silence_names_refusals_once_after_the_quiet_time() -> None:
    """Refused requests explain a quiet topic, said once, and only after `quiet_s`."""
    quiet = Silence("infer/result", _graph(["infer/result"]), now=0.0, quiet_s=2.0)
    for code in ("RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"):
        quiet.see(_received("infer/error", {"code": code}))
    assert quiet.notes(1.0) == []
    (note,) = quiet.notes(2.5)
    assert "refuses requests (RESOURCE_EXHAUSTED 2, UNAVAILABLE 1 on infer/error)" in note
    assert quiet.notes(10.0) == []


def test_silence_names_a_state_that_is_not_normal() -> None:
    """A DEGRADED or SAFE_STOP state is named with its cause; NORMAL says nothing."""
    quiet = Silence("infer/result", None, now=0.0, quiet_s=1.0)
    quiet.see(_received("safety/state", {"state": "NORMAL", "cause": ""}))
    assert quiet.notes(5.0) == []
    quiet.see(_received("safety/state", {"state": "SAFE_STOP", "cause": "ingest failed"}))
    assert quiet.notes(6.0) == [
        "# the safety state is SAFE_STOP (ingest failed); requests may be refused"
    ]


def test_silence_waits_again_after_the_topic_is_heard() -> None:
    """A message of the topic restarts the quiet time."""
    quiet = Silence("infer/result", None, now=0.0, quiet_s=2.0)
    quiet.see(_received("infer/error", {"code": "DEADLINE_EXCEEDED"}))
    quiet.heard(5.0)
    assert quiet.notes(6.0) == []
    assert len(quiet.notes(7.5)) == 1
