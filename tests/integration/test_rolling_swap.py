"""Rolling, probe-gated swap: workers whose memory budget holds one version switch one at a
time, each passing its known answer before it takes work; a failure returns every worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.models.keys import generate_key_pair, load_private_key
from vigil.models.repository import RepositoryConfig, set_latest
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.loader import LoaderConfig
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig
from vigil.schemas import ModelEvent, ModelStep, Topic
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import add_version, classifier_workers, tiny_classifier
from vigil.testing.pipeline import LoadDriver
from vigil.tools.cli import cli

pytestmark = pytest.mark.verifies("SR-MDL-002", "SR-MDL-003")

# Each version carries 24 MB of weights the graph never reads: its file (read and hashed by
# the worker before it loads) and its footprint are then known, whatever the allocator does.
PAD_FLOATS = 6_000_000
# Holds one version (>= 24 MB) but never two: a new version is estimated at >= 3 x 24 MB.
BUDGET_MB = 64


def _padded(seed: int) -> bytes:
    model = onnx.load_from_string(tiny_classifier(seed))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(PAD_FLOATS, np.float32), "pad"))
    data: bytes = model.SerializeToString()
    return data


@dataclass
class Rolling:
    root: Path
    launcher: Launcher
    driver: LoadDriver
    events: Subscriber


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def rolling(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[Rolling]:
    """Versions 1 (serving) and 2 of a padded classifier, signed, served by two workers whose
    memory budget (host memory on the CPU, device memory on CUDA) holds one version; load
    keeps flowing through a real client."""
    device = request.param
    if device == "cuda":
        ort = pytest.importorskip("onnxruntime")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("no CUDA execution provider on this host")
    pair = generate_key_pair(short_tmp / "private", name="release")
    trusted = short_tmp / "trusted"
    trusted.mkdir()
    (trusted / "release.pub").write_bytes(pair.public.read_bytes())
    key = load_private_key(pair.private)
    root = short_tmp / "models"
    add_version(root, "tiny", "1", _padded(1), key, activate=True)
    add_version(root, "tiny", "2", _padded(2), key)
    workers = classifier_workers(2, memory_budget_mb=BUDGET_MB)
    engine = {**workers.config["engine"], "device": device}
    workers = msgspec.structs.replace(workers, config={**workers.config, "engine": engine})
    repository = RepositoryConfig(root=str(root), model="tiny", trusted_keys=str(trusted))
    launch = launch_file(
        "rolling",
        node("logger", LoggerConfig(store=StoreConfig(path="log.store"))),
        node("loader", LoaderConfig(repository=repository)),
        workers,
        node("ingest", IngestConfig(default_deadline_ms=20000)),
    )
    path = write(launch, short_tmp)
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        with (
            LoadDriver(launcher, in_flight=4, deadline_s=20.0) as driver,
            Subscriber(launcher.ctx, run.sub, [Topic.MODEL_EVENT]) as events,
        ):
            driver.run_until(lambda: _serving(driver) == {"1"}, 60, "version 1 serving")
            yield Rolling(root, launcher, driver, events)


def _serving(driver: LoadDriver) -> set[str]:
    return {o.result.version for o in driver.outcomes[-4:] if o.result is not None}


def _collect(r: Rolling, seen: list[ModelEvent]) -> None:
    while (got := r.events.recv(0)) is not None:
        if isinstance(got.body, ModelEvent):
            seen.append(got.body)


def _until_event(
    r: Rolling, seen: list[ModelEvent], node: str, steps: set[ModelStep], version: str
) -> int:
    """Drive the load until `node` publishes one of `steps` for `version`; when it was seen."""

    def arrived() -> bool:
        _collect(r, seen)
        return any(e.node == node and e.step in steps and e.version == version for e in seen)

    return r.driver.run_until(arrived, 90, f"{node} {steps}")


def _log(r: Rolling, *args: str) -> str:
    store = r.launcher.run.path / "log.store"
    shown = CliRunner().invoke(cli, ["log", *args[:1], str(store), *args[1:]])
    assert shown.exit_code == 0, shown.output
    return shown.output


def _until_sealed(r: Rolling, args: tuple[str, ...], text: str) -> str:
    deadline = time.monotonic() + 30
    while text not in (out := _log(r, *args)):
        assert time.monotonic() < deadline, out[-3000:]
        r.driver.step()
    return out


def _assert_no_request_failed(r: Rolling) -> None:
    r.driver.drain()
    failed = [o.error for o in r.driver.outcomes if o.error is not None]
    assert not failed, failed[:5]


def test_rolling_swap_switches_one_worker_at_a_time_under_load(rolling: Rolling) -> None:
    """Two versions do not fit a worker's budget: both workers defer, then worker.1 and only
    then worker.2 switch, each with its known answer passed first; the loader commits once
    both serve version 2; no request fails and `vigil model status` shows the outcome."""
    r = rolling
    seen: list[ModelEvent] = []
    set_latest(r.root, "tiny", "2")
    committed_at = _until_event(
        r, seen, "loader", {ModelStep.COMMITTED, ModelStep.ROLLED_BACK}, "2"
    )
    steps = [(e.node, e.step) for e in seen if e.node != "loader" and e.version == "2"]
    # Both defer (in either order), then one worker at a time: loading, switched, next.
    assert set(steps[:2]) == {("worker.1", ModelStep.DEFERRED), ("worker.2", ModelStep.DEFERRED)}
    assert steps[2:] == [
        ("worker.1", ModelStep.LOADING),
        ("worker.1", ModelStep.SWITCHED),
        ("worker.2", ModelStep.LOADING),
        ("worker.2", ModelStep.SWITCHED),
    ], steps
    switched = [e for e in seen if e.step is ModelStep.SWITCHED and e.node != "loader"]
    assert all(e.detail.startswith("known answer passed") for e in switched)
    assert all(e.footprint_bytes >= PAD_FLOATS * 4 for e in switched)
    (commit,) = [e for e in seen if e.node == "loader" and e.step is ModelStep.COMMITTED]

    assert commit.version == "2" and "rolled out one worker at a time" in commit.detail
    # Once committed, every worker serves version 2.
    r.driver.run_until(
        lambda: any(o.sent_ns > committed_at for o in r.driver.outcomes), 30, "served after"
    )
    after = [o.result.version for o in r.driver.outcomes if o.sent_ns > committed_at and o.result]
    assert set(after) == {"2"}
    _assert_no_request_failed(r)
    status = CliRunner().invoke(
        cli, ["model", "status", "--run-dir", str(r.launcher.run.path), "--wait", "1"]
    )
    assert status.exit_code == 0, status.output
    assert "last switch: 2 committed, rolled out one worker at a time" in status.output
    assert "worker.1     tiny 2" in status.output and "worker.2     tiny 2" in status.output


def test_worker_killed_mid_rollout_rolls_every_worker_back(rolling: Rolling) -> None:
    """worker.2 is killed while worker.1 switches: the rollout fails, worker.1 returns to
    version 1, the restarted worker.2 serves version 1; the rollback and its reason are
    sealed, and no request fails."""
    r = rolling
    seen: list[ModelEvent] = []
    set_latest(r.root, "tiny", "2")
    _until_event(r, seen, "worker.1", {ModelStep.LOADING}, "2")
    victim = next(c for c in r.launcher.children if c.plan.label == "worker.2")
    os.kill(victim.pid, signal.SIGKILL)
    _until_event(r, seen, "loader", {ModelStep.COMMITTED, ModelStep.ROLLED_BACK}, "2")
    (back,) = [e for e in seen if e.node == "loader" and e.step is ModelStep.ROLLED_BACK]
    assert back.version == "2" and "worker.2 restarted during the rollout" in back.detail
    rolled_back_at = time.monotonic_ns()
    r.driver.run_until(
        lambda: len([o for o in r.driver.outcomes if o.sent_ns > rolled_back_at]) >= 8,
        60,
        "served after the rollback",
    )
    after = {o.result.version for o in r.driver.outcomes if o.sent_ns > rolled_back_at and o.result}
    assert after == {"1"}
    _assert_no_request_failed(r)
    shown = _until_sealed(r, ("show", "--event", "model.event", "--node", "loader"), "rolled_back")
    assert "worker.2 restarted during the rollout" in shown
    audit = _until_sealed(r, ("audit", "--class", "software_update"), "MODEL_ROLLED_BACK")
    assert " 4006 MODEL_ROLLED_BACK " in audit
    print(shown)
    print(audit)


def test_known_answer_failing_mid_rollout_returns_the_first_worker(rolling: Rolling) -> None:
    """A version whose known answer cannot pass: the first worker refuses it before it takes
    any work on it and serves version 1 again; the rollout is rolled back and worker.2 is
    never touched."""
    r = rolling
    key = load_private_key(next((r.root.parent / "private").glob("*.key")))
    bad = add_version(r.root, "tiny", "3", _padded(3), key)
    other = add_version(r.root, "tiny", "4", _padded(4), key)
    (bad / "kat-expected.npz").write_bytes((other / "kat-expected.npz").read_bytes())
    (bad / "model.sig").unlink()
    from vigil.models.signing import sign_directory  # noqa: PLC0415

    sign_directory(bad, key)
    seen: list[ModelEvent] = []
    set_latest(r.root, "tiny", "3")
    _until_event(r, seen, "loader", {ModelStep.COMMITTED, ModelStep.ROLLED_BACK}, "3")
    (back,) = [e for e in seen if e.node == "loader" and e.step is ModelStep.ROLLED_BACK]
    assert "worker.1: known answer differs" in back.detail
    touched = {e.node for e in seen if e.step in {ModelStep.LOADING, ModelStep.SWITCHED}}
    assert "worker.2" not in touched
    assert not any(e.version == "3" and e.step is ModelStep.SWITCHED for e in seen)
    _assert_no_request_failed(r)
    assert {o.result.version for o in r.driver.outcomes if o.result} == {"1"}
