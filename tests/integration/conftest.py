"""Launch the real pipeline (real processes, sockets, onnxruntime) in a temporary run dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, LaunchFile, load
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.loader import LoaderConfig, PinnedModel
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig
from vigil.nodes.watchdog import ProbeConfig, WatchdogConfig
from vigil.nodes.worker import EngineConfig, WorkerConfig
from vigil.testing.launchfiles import launch_file, node, write

DETECTOR = PinnedModel(
    name="ppocr-det",
    version="4.0",
    path="package:rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
)
LOGGER = LoggerConfig(store=StoreConfig(path="log.store"))
# Small frames and one inference thread: the pipeline shares the machine with its tests.
WORKER = WorkerConfig(
    max_batch=4,
    max_queue_delay_us=2000,
    warm_height=96,
    warm_width=160,
    engine=EngineConfig(intra_op_threads=1),
)
INGEST = IngestConfig(default_deadline_ms=10000)
WATCHDOG = WatchdogConfig(probe=ProbeConfig(height=96, width=160))


def pipeline_launch(
    *, ingest: IngestConfig = INGEST, worker: WorkerConfig = WORKER, **fields: Any
) -> LaunchFile:
    """A launch file for the request path with small frames; `fields` sets other
    `LaunchFile` fields (`bus`, `security`, ...)."""
    return launch_file(
        "itest",
        node("logger", LOGGER, required=True),
        node("loader", LoaderConfig(pinned=DETECTOR)),
        node("worker", worker, replicas=2),
        node("ingest", ingest),
        node("watchdog", WATCHDOG),
        **fields,
    )


@pytest.fixture
def launched(short_tmp: Path) -> Iterator[Launcher]:
    """The pipeline up and ready; stopped (and its log committed) when the test ends."""
    path = write(pipeline_launch(), short_tmp)
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        yield launcher
