"""The static node contracts agree with what real nodes announce when they start."""

from __future__ import annotations

import importlib
from pathlib import Path

import vigil.nodes
from vigil.bus.rundir import RunDir, resolve_endpoint
from vigil.launch import Launcher, load
from vigil.launch.check import check_plan
from vigil.nodes.demo_sink import SinkConfig
from vigil.nodes.demo_source import SourceConfig
from vigil.nodes.kinds import node_kind, node_kinds
from vigil.schemas import Config
from vigil.testing.launchfiles import launch_file, node, write

NODES = Path(vigil.nodes.__file__).parent

SOURCES = launch_file(
    "sources",
    node("sink", SinkConfig()),
    node("source", SourceConfig(rate_hz=1, height=32)),
)


def _assert_matches(launcher: Launcher) -> set[str]:
    """Compare every started node's announcement with its kind's contract; the kinds seen."""
    kinds: set[str] = set()
    for child in launcher.children:
        kind = child.plan.spec.kind
        kinds.add(kind)
        contract = node_kind(kind).contract(child.plan.config)
        label = child.plan.label
        assert set(child.publishes) == contract.publishes, label
        assert set(child.subscribes) == contract.subscribes, label
        declared = {e.key: e for e in contract.endpoints if e.key}
        for key, address in child.endpoints.items():
            if kind == "proxy":
                continue  # the proxy's endpoints are the run's bus, not configured
            assert key in declared, f"{label} reports endpoint {key!r} its contract lacks"
            configured = declared[key].name
            assert address in {configured, resolve_endpoint(launcher.run, configured)}, label
    return kinds


def test_contracts_match_the_pipeline_nodes(launched: Launcher) -> None:
    """Proxy, logger, loader, worker, ingest and watchdog announce exactly their contract."""
    kinds = _assert_matches(launched)
    assert kinds == {"proxy", "logger", "loader", "worker", "ingest", "watchdog"}
    assert check_plan(launched.plan).ok


def test_contracts_match_the_demo_nodes(short_tmp: Path) -> None:
    """The demo source and sink announce exactly their contract."""
    path = write(SOURCES, short_tmp)
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        assert _assert_matches(launcher) == {"proxy", "demo_sink", "demo_source"}


def test_every_node_package_declares_its_kind() -> None:
    """A new node package cannot be launched without its contract being declared."""
    packages = {p.parent.name for p in NODES.glob("[!_]*/__init__.py")}
    kinds = node_kinds()
    assert set(kinds) == packages
    for name, kind in kinds.items():
        assert kind.name == name
        assert issubclass(kind.config, Config) and callable(kind.contract), name
        assert callable(importlib.import_module(kind.implementation).run), name
