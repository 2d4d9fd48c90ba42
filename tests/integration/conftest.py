"""Launch the real pipeline (real processes, sockets, onnxruntime) in a temporary run dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load

DETECTOR = {
    "name": "ppocr-det",
    "version": "4.0",
    "path": "package:rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "sha256": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
}


def pipeline_launch(**overrides: object) -> dict[str, object]:
    """A launch file for the request path with small frames, as a dict to tweak."""
    launch: dict[str, object] = {
        "name": "itest",
        "heartbeat_ms": 100,
        "allow_root": True,  # the tests run as root in CI
        "nodes": [
            {
                "name": "logger",
                "kind": "logger",
                "required": True,
                "config": {"store": {"path": "log.store"}},
            },
            {"name": "loader", "kind": "loader", "config": {"pinned": DETECTOR}},
            {
                "name": "worker",
                "kind": "worker",
                "replicas": 2,
                "config": {
                    "max_batch": 4,
                    "max_queue_delay_us": 2000,
                    "warm_height": 96,
                    "warm_width": 160,
                    "engine": {"intra_op_threads": 1},
                },
            },
            {"name": "ingest", "kind": "ingest", "config": {"default_deadline_ms": 10000}},
            {
                "name": "watchdog",
                "kind": "watchdog",
                "config": {"probe": {"height": 96, "width": 160}},
            },
        ],
    }
    launch.update(overrides)
    return launch


@pytest.fixture
def launched(short_tmp: Path) -> Iterator[Launcher]:
    """The pipeline up and ready; stopped (and its log committed) when the test ends."""
    path = short_tmp / "itest.yaml"
    path.write_text(yaml.safe_dump(pipeline_launch()))
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        yield launcher
