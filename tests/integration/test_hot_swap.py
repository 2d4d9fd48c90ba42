"""Signed models hot-swapped under load: no failed request, no unverified byte ever served."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zmq
from click.testing import CliRunner

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.errors import RequestError
from vigil.launch import Launcher, load
from vigil.models.keys import generate_key_pair, load_private_key
from vigil.models.repository import set_latest
from vigil.models.signing import sign_directory
from vigil.nodes.ingest import IngestConfig
from vigil.schemas import DiagCode, DiagnosticEvent, InferResult, ModelEvent, ModelStep, Topic
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import add_version, signed_pair, tiny_classifier
from vigil.testing.pipeline import classifier_serving
from vigil.tools.cli import cli

FRAME = np.full((32, 32, 3), 128, dtype=np.uint8)


@dataclass
class Repo:
    root: Path
    keys: Path
    launcher: Launcher
    other_key: Path = field(default=Path())


@pytest.fixture
def repo(short_tmp: Path) -> Iterator[Repo]:
    """Two signed versions of a small classifier served by two workers."""
    root, trusted, _ = signed_pair(short_tmp)
    launch = launch_file(
        "swap",
        *classifier_serving(root, trusted),
        node("ingest", IngestConfig(default_deadline_ms=10000)),
    )
    path = write(launch, short_tmp)
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        yield Repo(root, trusted, launcher, other_key=short_tmp / "private")


def _loader_event(sub: Subscriber, steps: set[ModelStep], timeout_s: float) -> ModelEvent:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = sub.recv(100)
        body = got.body if got is not None else None
        if isinstance(body, ModelEvent) and body.node == "loader" and body.step in steps:
            return body
    raise AssertionError(f"no loader event {steps} within {timeout_s} s")


def _serving(client: Client, ts: int) -> InferResult:
    return client.infer(FRAME, stream_id="s", frame_ts_us=ts, deadline_s=10)


@pytest.mark.verifies("SR-MDL-002")
def test_fifty_switches_under_load_fail_no_request(repo: Repo) -> None:
    """50 switches between two versions under continuous load: every request ends with a
    result, tagged with a version that was committed while it was in flight."""
    ctx = repo.launcher.ctx
    with (
        Client(repo.launcher.run.ipc("ingest"), name="load", ctx=ctx) as client,
        Subscriber(ctx, repo.launcher.run.sub, [Topic.MODEL_EVENT]) as events,
    ):
        first = _serving(client, 1)  # version 1 is up before the switching starts
        assert first.version == "1"
        committed: list[tuple[int, str]] = [(0, "1")]
        sent: dict[int, int] = {}
        outcomes: list[tuple[int, int, InferResult | RequestError]] = []
        ts = 1
        poller = zmq.Poller()
        client.register(poller)
        poller.register(events.socket, zmq.POLLIN)
        switches = 0
        want = "2"
        set_latest(repo.root, "tiny", want)
        deadline = time.monotonic() + 240
        while switches < 50:
            assert time.monotonic() < deadline, f"only {switches} switches in time"
            while client.in_flight < 4:
                ts += 1
                sent[client.submit(FRAME, stream_id="s", frame_ts_us=ts, deadline_s=10)] = (
                    time.monotonic_ns()
                )
            ready = dict(poller.poll(100))
            if client.owns(ready):
                while (reply := client.poll(0)) is not None:
                    seq, outcome = reply
                    outcomes.append((sent.pop(seq), time.monotonic_ns(), outcome))
            if ready.get(events.socket):
                while (got := events.recv(0)) is not None:
                    body = got.body
                    if not isinstance(body, ModelEvent) or body.node != "loader":
                        continue
                    assert body.step is not ModelStep.ROLLED_BACK, body.detail
                    if body.step is ModelStep.COMMITTED and body.version == want:
                        committed.append((time.monotonic_ns(), want))
                        switches += 1
                        want = "1" if want == "2" else "2"
                        set_latest(repo.root, "tiny", want)
        while client.in_flight:
            reply = client.poll(10_000)
            assert reply is not None
            outcomes.append((sent.pop(reply[0]), time.monotonic_ns(), reply[1]))
    failures = [o for _, _, o in outcomes if not isinstance(o, InferResult)]
    assert not failures, failures[:5]
    assert len(outcomes) > 100
    for sent_ns, done_ns, result in outcomes:
        assert isinstance(result, InferResult)
        # The version serving when the request was sent, or any committed while it was open
        # (a commit reaches workers a moment after the loader announces it).
        at_send = [v for t, v in committed if t <= sent_ns][-1]
        during = {v for t, v in committed if sent_ns < t <= done_ns + 1_000_000_000}
        assert result.version in {at_send, *during}
    assert {r.version for _, _, r in outcomes if isinstance(r, InferResult)} == {"1", "2"}
    _assert_switches_in_log(repo, switches)


def _assert_switches_in_log(repo: Repo, switches: int) -> None:
    """`vigil log show` lists the loader's committed switches, alternating, in order."""
    store = repo.launcher.run.path / "log.store"
    deadline = time.monotonic() + 20
    while True:
        shown = CliRunner().invoke(
            cli, ["log", "show", str(store), "--node", "loader", "--event", "model.event"]
        )
        assert shown.exit_code == 0, shown.output
        committed = [line for line in shown.output.splitlines() if '"step":"committed"' in line]
        if len(committed) > switches:
            break
        assert time.monotonic() < deadline, shown.output[-2000:]
        repo.launcher.supervise(0.1)
    versions = [line.split('"version":"', 1)[1].split('"', 1)[0] for line in committed]
    assert versions[0] == "1"  # the first commit, at start-up
    assert all(a != b for a, b in itertools.pairwise(versions))


def _bad_versions(repo: Repo) -> dict[str, str]:
    """Each kind of bad version the issue names, as version folder -> what is wrong."""
    key = load_private_key(next(repo.other_key.glob("*.key")))
    bad: dict[str, str] = {}
    flipped = add_version(repo.root, "tiny", "10", tiny_classifier(3), key)
    data = bytearray((flipped / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "model.onnx").write_bytes(bytes(data))
    bad["10"] = "flipped bit"
    truncated = add_version(repo.root, "tiny", "11", tiny_classifier(3), key)
    (truncated / "model.onnx").write_bytes((truncated / "model.onnx").read_bytes()[:-7])
    bad["11"] = "truncated"
    stranger = generate_key_pair(repo.root.parent / "stranger", name="stranger")
    add_version(repo.root, "tiny", "12", tiny_classifier(3), load_private_key(stranger.private))
    bad["12"] = "untrusted key"
    unsigned = add_version(repo.root, "tiny", "13", tiny_classifier(3), key)
    os.remove(unsigned / "model.sig")
    bad["13"] = "missing signature"
    elsewhere = repo.root.parent / "unsigned" / "14"
    elsewhere.mkdir(parents=True)
    (elsewhere / "model.onnx").write_bytes(tiny_classifier(3))
    bad[str(elsewhere)] = "latest re-pointed to an unsigned folder"
    return bad


def _point_latest(root: Path, target: str) -> None:
    """Re-point `latest` the way an attacker with write access would (any target at all)."""
    link = root / "tiny" / "latest"
    tmp = root / "tiny" / ".latest.tmp"
    tmp.symlink_to(target)
    os.replace(tmp, link)


@pytest.mark.verifies("SR-MDL-001")
def test_bad_models_are_refused_and_serving_continues(repo: Repo) -> None:
    """A flipped bit, a truncation, an untrusted key, no signature and a link to an unsigned
    folder: each is refused with a diagnostic, none is served, version 1 keeps serving."""
    ctx = repo.launcher.ctx
    with (
        Client(repo.launcher.run.ipc("ingest"), name="probe", ctx=ctx) as client,
        Subscriber(ctx, repo.launcher.run.sub, [Topic.MODEL_EVENT, Topic.DIAGNOSTIC]) as sub,
    ):
        assert _serving(client, 1).version == "1"
        ts = 1
        for version, what in _bad_versions(repo).items():
            _point_latest(repo.root, version)
            event = _loader_event(sub, {ModelStep.REFUSED, ModelStep.COMMITTED}, 30)
            assert event.step is ModelStep.REFUSED, f"{what} was committed"
            deadline = time.monotonic() + 60
            diag = None
            while diag is None and time.monotonic() < deadline:
                got = sub.recv(100)
                if got is not None and isinstance(got.body, DiagnosticEvent):
                    diag = got.body
            assert diag is not None and diag.code is DiagCode.MODEL_INTEGRITY, what
            ts += 1
            assert _serving(client, ts).version == "1", what


@pytest.mark.verifies("SR-MDL-003")
def test_failed_known_answer_rolls_every_worker_back(repo: Repo) -> None:
    """A properly signed version whose known answer the workers cannot reproduce is prepared,
    refused by the workers, rolled back by the loader; version 1 keeps serving."""
    key = load_private_key(next(repo.other_key.glob("*.key")))
    folder = add_version(repo.root, "tiny", "20", tiny_classifier(4), key)
    # Re-sign after swapping in another model's expected outputs: the signature is valid,
    # the known answer is wrong for this graph.
    other = add_version(repo.root, "tiny", "21", tiny_classifier(5), key)
    (folder / "kat-expected.npz").write_bytes((other / "kat-expected.npz").read_bytes())
    (folder / "model.sig").unlink()
    sign_directory(folder, key)
    ctx = repo.launcher.ctx
    with (
        Client(repo.launcher.run.ipc("ingest"), name="kat", ctx=ctx) as client,
        Subscriber(ctx, repo.launcher.run.sub, [Topic.MODEL_EVENT]) as sub,
    ):
        assert _serving(client, 1).version == "1"
        set_latest(repo.root, "tiny", "20")
        event = _loader_event(sub, {ModelStep.ROLLED_BACK, ModelStep.COMMITTED}, 30)
        assert event.step is ModelStep.ROLLED_BACK, event
        assert "known answer" in event.detail
        assert _serving(client, 2).version == "1"
