"""Nodes off the inference path stay lean: they load neither onnxruntime nor NumPy."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "vigil.nodes.proxy._node",
        "vigil.nodes.ingest._node",
        "vigil.nodes.metrics._node",
        "vigil.nodes.loader._node",
    ],
)
def test_a_node_off_the_inference_path_imports_neither_onnxruntime_nor_numpy(module: str) -> None:
    """Importing the node entry and the node's implementation, in a fresh interpreter, loads
    neither (the README promises it: memory and start-up time of every such process)."""
    code = (
        f"import sys, vigil.nodes._entry, {module}; "
        "print(sorted(m for m in ('numpy', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
