"""CurveZMQ on tcp: a peer without an allowed key is refused and logged; the bus serves on."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import zmq
from click.testing import CliRunner, Result

from tests.integration.conftest import INGEST, WORKER, pipeline_launch
from vigil.bus.curve import CurveConfig, load_public
from vigil.bus.pubsub import Publisher, Subscriber
from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.errors import DeadlineExceeded, PermissionDenied, Unavailable
from vigil.launch import Launcher, load
from vigil.launch.model import BusSpec, SecuritySpec
from vigil.nodes._scene import render_scene
from vigil.nodes.ingest import TenantBinding
from vigil.nodes.logger.store import read_entries
from vigil.schemas import DiagCode, DiagnosticEvent, Heartbeat, InferResult, Severity, Topic
from vigil.testing.launchfiles import write
from vigil.tools._options import KEY_ENV
from vigil.tools.cli import cli

pytestmark = pytest.mark.verifies("SR-SEC-001")

# How long an unauthorised peer is given to get anything through. Authorised peers see
# heartbeats every 100 ms, so silence for this long is a refusal, not a slow start.
_REFUSED_FOR_S = 1.5
_MARK = "intruder publication"
# Only a guard against a hang: the refusal reports are awaited as messages, not timed.
_HANG_S = 120


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@dataclass
class Secured:
    launcher: Launcher
    frontend: str
    pub: str
    sub: str
    client: CurveConfig
    intruder: CurveConfig
    refusals: list[DiagnosticEvent] = field(default_factory=list)


def _gen(runner: CliRunner, folder: Path, name: str) -> None:
    result = runner.invoke(cli, ["keys", "gen", "--out", str(folder), "--name", name])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    """The pipeline on tcp 127.0.0.1 with Curve, allowing the key `client` besides its own."""
    with tempfile.TemporaryDirectory(prefix="vg-", dir="/tmp") as tmp:
        root = Path(tmp)
        runner = CliRunner()
        for name in ("server", "node", "client"):
            _gen(runner, root / "keys", name)
        _gen(runner, root / "elsewhere", "intruder")
        pub_port, sub_port, front_port, back_port = _free_ports(4)
        frontend = f"tcp://127.0.0.1:{front_port}"
        backend = f"tcp://127.0.0.1:{back_port}"
        # The client's key is bound to a tenant and a ceiling below the safety priority.
        binding = TenantBinding(key="keys/client.key", tenant="cams", max_priority=5)
        launch = pipeline_launch(
            ingest=msgspec.structs.replace(
                INGEST, frontend=frontend, backend=backend, bindings=[binding]
            ),
            worker=msgspec.structs.replace(WORKER, backend=backend),
            bus=BusSpec(address="127.0.0.1", pub_port=pub_port, sub_port=sub_port),
            security=SecuritySpec(keys_dir="keys", allowed=["client"]),
        )
        path = write(launch, root, "secure.yaml")
        run = RunDir(root / "run")
        keys = root / "keys"
        with Launcher(load(path, run.path), run) as launcher:
            launcher.start()
            yield Secured(
                launcher=launcher,
                frontend=frontend,
                pub=f"tcp://127.0.0.1:{pub_port}",
                sub=f"tcp://127.0.0.1:{sub_port}",
                client=CurveConfig(
                    server_key=str(keys / "server.key"),
                    client_secret=str(keys / "client.key_secret"),
                ),
                intruder=CurveConfig(
                    server_key=str(keys / "server.key"),
                    client_secret=str(root / "elsewhere" / "intruder.key_secret"),
                ),
            )


def _infer(endpoint: str, curve: CurveConfig | None, deadline_s: float) -> InferResult:
    with Client(endpoint, name="curve-test", curve=curve) as client:
        return client.infer(
            render_scene(1, 96, 160),
            stream_id="curve",
            frame_ts_us=time.time_ns() // 1000,
            deadline_s=deadline_s,
        )


@pytest.mark.verifies("SR-SEC-003")
@pytest.mark.parametrize(
    ("tenant", "priority", "field"),
    [("other", 0, "$.tenant"), ("cams", 6, "$.priority")],
    ids=["another-tenant", "above-the-ceiling"],
)
def test_a_bound_key_may_claim_neither_another_tenant_nor_a_higher_priority(
    secured: Secured, tenant: str, priority: int, field: str
) -> None:
    """The client's key is bound to its tenant and ceiling: a request claiming another tenant,
    or a priority above the ceiling, is refused with PERMISSION_DENIED (DIA-6002)."""
    with (
        Client(secured.frontend, name="curve-test", curve=secured.client, tenant=tenant) as client,
        pytest.raises(PermissionDenied) as refused,
    ):
        client.infer(
            render_scene(1, 96, 160),
            stream_id="claims",
            frame_ts_us=time.time_ns() // 1000,
            deadline_s=20,
            priority=priority,
        )
    assert (refused.value.reply.field, refused.value.reply.diag_code) == (
        field,
        DiagCode.IDENTITY_REFUSED,
    )


def test_authorised_client_gets_results_over_curve(secured: Secured) -> None:
    """A client whose key is allowed gets its result over the encrypted tcp endpoint."""
    result = _infer(secured.frontend, secured.client, 20)
    assert isinstance(result, InferResult)
    assert result.worker.startswith("worker")


@pytest.mark.parametrize("who", ["intruder key", "no key"])
def test_unauthorised_peer_can_neither_subscribe_publish_nor_request(
    secured: Secured, who: str
) -> None:
    """A peer with a key not allowed, or with none, gets nothing through on any endpoint,
    and every refused endpoint is reported as an AUTH_REFUSED diagnostic."""
    peer = secured.intruder if who == "intruder key" else None
    with (
        zmq.Context() as ctx,
        Subscriber(
            ctx, secured.sub, [Topic.DIAGNOSTIC, Topic.HEARTBEAT], curve=secured.client
        ) as watch,
        Subscriber(ctx, secured.sub, [Topic.HEARTBEAT, Topic.DIAGNOSTIC], curve=peer) as spy,
        Publisher(ctx, secured.pub, source="intruder", curve=peer) as forger,
    ):
        beats = 0
        forged = 0
        deadline = time.monotonic() + _REFUSED_FOR_S
        while time.monotonic() < deadline:
            forger.publish(
                Topic.DIAGNOSTIC,
                DiagnosticEvent(
                    code=DiagCode.MALFORMED_FRAME,
                    severity=Severity.INFO,
                    node="intruder",
                    message=_MARK,
                ),
            )
            got = watch.recv(100)
            if got is None:
                continue
            if isinstance(got.body, Heartbeat):
                beats += 1
            elif isinstance(got.body, DiagnosticEvent):
                forged += got.body.message == _MARK
                if got.body.code == DiagCode.AUTH_REFUSED:
                    secured.refusals.append(got.body)
            assert spy.recv(0) is None, "an unauthorised subscriber received a message"
        assert spy.recv(0) is None
        assert beats > 0, "the authorised watcher saw no heartbeat: the bus is not flowing"
        assert forged == 0, "an unauthorised publication reached the bus"
        # A typed error, never a result and never a hang: queued and unanswered, or refused
        # at once when the refused connection is already gone. The client stays connected
        # (its handshake retried) until every refusal is reported: on a loaded host its first
        # handshake may not even be tried within the request's deadline.
        with Client(secured.frontend, name="curve-test", curve=peer) as requester:
            with pytest.raises((DeadlineExceeded, Unavailable)):
                requester.infer(
                    render_scene(1, 96, 160),
                    stream_id="curve",
                    frame_ts_us=time.time_ns() // 1000,
                    deadline_s=0.5,
                )
            # Each refused endpoint is reported by its node's next heartbeat.
            wanted = {secured.pub, secured.sub, secured.frontend}
            key = load_public(peer.client_secret).decode() if peer else ""
            seen: set[str] = set()
            deadline = time.monotonic() + _HANG_S
            while not wanted <= seen and time.monotonic() < deadline:
                got = watch.recv(100)
                if (
                    got is not None
                    and isinstance(got.body, DiagnosticEvent)
                    and got.body.code == DiagCode.AUTH_REFUSED
                ):
                    secured.refusals.append(got.body)
                seen = {
                    r.field
                    for r in secured.refusals
                    if (key in r.message if key else "without a key" in r.message)
                }
        assert wanted <= seen, f"refusals reported for {seen}, expected {wanted}"


def test_refusals_are_sealed_and_the_pipeline_serves_on(secured: Secured) -> None:
    """After the refused attempts the sealed log holds AUTH_REFUSED diagnostics and security
    audit records, and an authorised client is still served."""
    result = _infer(secured.frontend, secured.client, 20)
    assert isinstance(result, InferResult)
    store = secured.launcher.run.path / "log.store"
    deadline = time.monotonic() + 20
    sealed: list[dict[str, object]] = []
    audited: list[str] = []
    while not (sealed and audited) and time.monotonic() < deadline:
        secured.launcher.supervise(0.2)
        sealed = [
            p
            for e in read_entries(store)
            if e.event == "diag.event"
            and (p := msgspec.msgpack.decode(e.payload)).get("code") == DiagCode.AUTH_REFUSED
        ]
        shown = CliRunner().invoke(cli, ["log", "audit", str(store), "--class", "security_event"])
        audited = [line for line in shown.output.splitlines() if " AUTH_REFUSED " in line]
    assert sealed, "no AUTH_REFUSED diagnostic in the sealed log"
    assert audited, "no AUTH_REFUSED security event among the binary audit records"


def _tap(secured: Secured, *args: str, key: str | None) -> Result:
    """Run a CLI tool on the secured run, with `--key` when given and never $VIGIL_KEY."""
    keys = ["--key", key] if key else []
    return CliRunner().invoke(
        cli,
        [*args, "--run-dir", str(secured.launcher.run.path), *keys],
        env={KEY_ENV: None},
        catch_exceptions=False,
    )


def test_graph_names_the_bus_server_key(secured: Secured) -> None:
    """graph.json records the tcp endpoints and the server's public key the tools need."""
    graph = secured.launcher.run.read_graph()
    assert (graph.endpoints["pub"], graph.endpoints["sub"]) == (secured.pub, secured.sub)
    assert graph.server_key == secured.client.server_key


def test_echo_with_an_allowed_key_prints_a_heartbeat(secured: Secured) -> None:
    """`topic echo --key` subscribes over Curve on the tcp bus and prints a heartbeat."""
    out = _tap(
        secured,
        *("topic", "echo", Topic.HEARTBEAT, "--once", "--timeout", "20"),
        key=secured.client.client_secret,
    )
    assert out.exit_code == 0, out.output
    message = json.loads(out.output.splitlines()[0])
    assert message["topic"] == Topic.HEARTBEAT
    assert message["body"]["type"] == "health.heartbeat"


def test_a_tool_without_a_key_names_the_option(secured: Secured) -> None:
    """Without a key a tool refuses at once and says what to pass, instead of being silently
    refused by the bus."""
    out = _tap(secured, "topic", "echo", Topic.HEARTBEAT, "--once", key=None)
    assert out.exit_code != 0
    assert "--key" in out.output and KEY_ENV in out.output and secured.sub in out.output


def test_node_list_with_an_allowed_key_hears_every_node(secured: Secured) -> None:
    """`node list --key` hears the heartbeat of every node over the secured bus."""
    out = _tap(
        secured, "node", "list", "--json", "--window", "20", key=secured.client.client_secret
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert rows and all(r["status"] == "alive" for r in rows), rows


def test_pub_with_an_allowed_key_reaches_a_subscriber(secured: Secured) -> None:
    """`topic pub --key` publishes over Curve; the message reaches a keyed subscriber."""
    topics = [Topic.DIAGNOSTIC, Topic.HEARTBEAT]
    with zmq.Context() as ctx, Subscriber(ctx, secured.sub, topics, curve=secured.client) as sub:
        # A heartbeat shows the subscription is at the proxy, so pub's wait will count it.
        while (got := sub.recv(20_000)) is None or not isinstance(got.body, Heartbeat):
            assert got is not None, "no heartbeat on the secured bus"
        value = '{code: DIA-2047, severity: ERROR, node: cli, message: "over curve"}'
        out = _tap(
            secured, "topic", "pub", Topic.DIAGNOSTIC, value, key=secured.client.client_secret
        )
        assert out.exit_code == 0, out.output
        while (got := sub.recv(10_000)) is None or got.envelope.source != "vigil-topic-pub":
            assert got is not None, "pub's message never arrived"
    assert isinstance(got.body, DiagnosticEvent) and got.body.message == "over curve"
