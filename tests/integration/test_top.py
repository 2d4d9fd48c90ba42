"""`vigil top` against a full pipeline: the safety state and every worker's model version."""

from __future__ import annotations

import time
from pathlib import Path

import zmq
from rich.console import Console

from vigil.bus.pubsub import Subscriber
from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.testing.pipeline import classifier_launch
from vigil.tools.top_cmd import TopView


def test_top_shows_the_safety_state_and_each_workers_model(short_tmp: Path) -> None:
    """Over proxy, logger, loader, two workers, ingest and watchdog, the rendered view names
    the watchdog's state (NORMAL) and, per worker, the model, version and generation it
    serves, and every node as alive."""
    path = classifier_launch(short_tmp, workers=2)
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        view = TopView(run, window_s=1.0)
        with (
            zmq.Context() as ctx,
            Subscriber(ctx, run.sub, [""], prefix=True, typed=False) as sub,
        ):

            def known() -> bool:
                rows = {r.name: r for r in view.nodes()}
                serving = all(
                    rows[w].detail.get("version") == "1" for w in ("worker.1", "worker.2")
                )
                return view.state is not None and serving and len(rows) == 7

            deadline = time.monotonic() + 30
            while not known():
                assert time.monotonic() < deadline, "top never heard the state and the models"
                view.take(sub, 100)
                launcher.supervise(0.001)
            console = Console(width=160, color_system=None)
            with console.capture() as captured:
                console.print(view.render(sub))
    text = captured.get()
    header = text.splitlines()[0]
    assert header.startswith(f"vigil top {run.path}  safety NORMAL  (watchdog started)")
    models = text[text.index("models") :]
    rows = [line.split() for line in models.splitlines() if line.startswith("worker.")]
    assert rows == [["worker.1", "tiny", "1", "1"], ["worker.2", "tiny", "1", "1"]]
    nodes = text[text.index("nodes") : text.index("topics")]
    for label in ("proxy", "logger", "loader", "worker.1", "worker.2", "ingest", "watchdog"):
        cells = next(x.split() for x in nodes.splitlines() if x.startswith(f"{label} "))
        assert cells[3] == "alive", cells
