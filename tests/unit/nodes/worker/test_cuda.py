"""The GPU path gives the CPU path's results (skipped where no CUDA GPU exists)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from vigil.nodes._scene import render_scene
from vigil.nodes.worker import EngineConfig, Task
from vigil.nodes.worker._cuda import cuda_available
from vigil.nodes.worker._engine import Engine
from vigil.testing.modelgen import tiny_classifier

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers() or not cuda_available(),
        reason="needs a CUDA GPU, onnxruntime-gpu and CuPy",
    ),
]

# Found without importing the package (its __init__ pulls in OCR post-processing libraries).
_SPEC = importlib.util.find_spec("rapidocr_onnxruntime")
assert _SPEC is not None and _SPEC.submodule_search_locations
DETECTOR = Path(_SPEC.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"


def _pair(model: bytes, **config: object) -> tuple[Engine, Engine]:
    cpu = Engine(model, EngineConfig(device="cpu", **config), name="m", version="1")  # type: ignore[arg-type]
    gpu = Engine(model, EngineConfig(device="cuda", **config), name="m", version="1")  # type: ignore[arg-type]
    return cpu, gpu


def test_gpu_engine_uses_cuda_with_io_binding() -> None:
    """A CUDA engine runs batches through the pinned/CuPy/I-O-binding path."""
    _, gpu = _pair(tiny_classifier(1), task=Task.CLASSIFICATION)
    assert gpu.providers[0] == "CUDAExecutionProvider"
    assert gpu.on_gpu


def test_detector_boxes_match_between_cpu_and_gpu() -> None:
    """The text detector finds the same boxes on the GPU as on the CPU."""
    cpu, gpu = _pair(DETECTOR.read_bytes())
    frames = [render_scene(i) for i in range(4)]
    ts = [1, 2, 3, 4]
    for want, got in zip(cpu.run(frames, ts), gpu.run(frames, ts), strict=True):
        assert len(want.boxes) == len(got.boxes)
        for a, b in zip(want.boxes, got.boxes, strict=True):
            assert abs(a.x_min - b.x_min) <= 2 and abs(a.y_max - b.y_max) <= 2
            assert abs(a.score - b.score) < 0.02


def test_preprocessing_matches_between_cpu_and_gpu() -> None:
    """Normalised NCHW batches agree: the CUDA kernel computes what numpy computes."""
    cpu, gpu = _pair(
        tiny_classifier(2), task=Task.CLASSIFICATION, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)
    )
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    want = cpu.infer(cpu.preprocess(frames))
    assert gpu._cuda is not None
    got = gpu._cuda.run(frames, gpu.padded(40, 56))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
