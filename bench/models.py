"""Benchmark models: a ResNet-50-topology ONNX classifier with seeded random weights.

The serving benchmark needs a real-sized vision model without fetching pretrained weights, so
this builds the ResNet-50 v1.5 graph (stride on the 3x3 convolution of each bottleneck) with
batch normalisation already folded into the convolutions, as an exported and optimised model
has it: Conv, Relu, Add, MaxPool, GlobalAveragePool, Flatten and Gemm only. The input is
`input` float32 [N, 3, 224, 224] (N dynamic), the output `logits` [N, 1000]. The fp16 variant
holds the same weights as float16 initialisers with float16 input and output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["RESNET50_STAGES", "resnet50"]

# (bottleneck width, blocks, stride of the first block) of each of the four stages.
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
_EXPANSION = 4
_CLASSES = 1000
_OPSET = 17
# The last convolution of each residual branch is scaled down (the role a trained model's
# small last-BN gamma plays) so activations stay well inside float16's range over 16 blocks.
_BRANCH_SCALE = 0.2


class _Builder:
    """Accumulates nodes and seeded initialisers of one graph."""

    def __init__(self, seed: int, dtype: type[np.floating]) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def _weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(self.dtype), name))
        return name

    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        k: int,
        *,
        stride: int = 1,
        relu: bool = True,
        scale: float = 1.0,
    ) -> str:
        """A convolution with its folded batch norm (weight and bias), optionally ReLU'd."""
        name = self._name("conv")
        fan_in = c_in * k * k
        w = self.rng.standard_normal((c_out, c_in, k, k), dtype=np.float32)
        w *= np.float32(scale * np.sqrt(2.0 / fan_in))
        b = self.rng.standard_normal(c_out, dtype=np.float32) * np.float32(0.01)
        out = f"{name}_out"
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self._weight(f"{name}_w", w), self._weight(f"{name}_b", b)],
                [out],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
        )
        return self.relu(out) if relu else out

    def relu(self, x: str) -> str:
        out = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [out], name=out))
        return out

    def add(self, a: str, b: str) -> str:
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        return out

    def bottleneck(self, x: str, c_in: int, width: int, stride: int) -> str:
        c_out = width * _EXPANSION
        y = self.conv(x, c_in, width, 1)
        y = self.conv(y, width, width, 3, stride=stride)
        y = self.conv(y, width, c_out, 1, relu=False, scale=_BRANCH_SCALE)
        shortcut = x
        if stride != 1 or c_in != c_out:
            shortcut = self.conv(x, c_in, c_out, 1, stride=stride, relu=False)
        return self.relu(self.add(y, shortcut))

    def head(self, x: str, c_in: int) -> str:
        pooled = self._name("gap")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=pooled))
        flat = self._name("flatten")
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], name=flat, axis=1))
        w = self.rng.standard_normal((c_in, _CLASSES), dtype=np.float32)
        w *= np.float32(np.sqrt(1.0 / c_in))
        b = np.zeros(_CLASSES, dtype=np.float32)
        self.nodes.append(
            helper.make_node(
                "Gemm",
                [flat, self._weight("fc_w", w), self._weight("fc_b", b)],
                ["logits"],
                name="fc",
            )
        )
        return "logits"


def _graph(seed: int, dtype: type[np.floating]) -> onnx.ModelProto:
    g = _Builder(seed, dtype)
    x = g.conv("input", 3, 64, 7, stride=2)
    pooled = "stem_pool"
    g.nodes.append(
        helper.make_node(
            "MaxPool",
            [x],
            [pooled],
            name=pooled,
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        )
    )
    x, channels = pooled, 64
    for width, blocks, stride in RESNET50_STAGES:
        for block in range(blocks):
            x = g.bottleneck(x, channels, width, stride if block == 0 else 1)
            channels = width * _EXPANSION
    logits = g.head(x, channels)
    elem = TensorProto.FLOAT16 if dtype is np.float16 else TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes,
        "resnet50",
        [helper.make_tensor_value_info("input", elem, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info(logits, elem, ["N", _CLASSES])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="vigil-bench",
    )
    # Readers of older onnxruntime builds refuse IR versions newer than they know.
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def resnet50(path: str | Path, *, fp16: bool = False, seed: int = 0) -> Path:
    """Write a ResNet-50 ONNX model with weights drawn from `seed`; returns its path.

    The same seed gives the same bytes; the fp16 file holds the fp32 weights rounded to
    float16 (they are drawn in float32 first, so both variants are the same network).
    """
    out = Path(path)
    model = _graph(seed, np.float16 if fp16 else np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString())
    return out
