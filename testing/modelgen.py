"""Generate small signed model repositories: for tests, the swap benchmark and trying vigil out."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vigil.launch.model import NodeSpec
from vigil.models.keys import SigningKey
from vigil.models.repository import KnownAnswer, set_latest, write_version
from vigil.nodes.worker import EngineConfig, LoneRequest, Task, WorkerConfig
from vigil.testing.launchfiles import node

__all__ = ["CLASSES", "add_version", "classifier_workers", "signed_pair", "tiny_classifier"]

CLASSES = 10


def tiny_classifier(seed: int) -> bytes:
    """A small classifier (global mean pool, then a dense layer) whose weights come from `seed`:
    two seeds give two versions whose top class differs on most inputs."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(3, CLASSES)).astype(np.float32)
    bias = rng.normal(size=(CLASSES,)).astype(np.float32)
    bias[seed % CLASSES] += 5.0  # each version has its own clear favourite class
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["scores"]),
            helper.make_node("Add", ["scores", "b"], ["logits"]),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def add_version(
    root: Path,
    name: str,
    version: str,
    model: bytes,
    key: SigningKey,
    *,
    known_answer: bool = True,
    activate: bool = False,
) -> Path:
    """Write, describe and sign one version folder; optionally point `latest` at it.

    The known-answer vector is computed here with onnxruntime on a fixed input, so every
    worker that loads the version must reproduce it.
    """
    files: dict[str, bytes] = {}
    kat = None
    if known_answer:
        import onnxruntime as ort  # noqa: PLC0415 - only packaging needs a session here

        x = np.linspace(-1, 1, 2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, {"x": x}), strict=True))
        files = {"kat-inputs.npz": _npz(x=x), "kat-expected.npz": _npz(**outputs)}
        kat = KnownAnswer(inputs="kat-inputs.npz", expected="kat-expected.npz")
    folder = write_version(root, name, version, model, files=files, known_answer=kat, key=key)
    if activate:
        set_latest(root, name, version)
    return folder


def signed_pair(folder: Path, model: str = "tiny") -> tuple[Path, Path, SigningKey]:
    """A repository with versions "1" (active) and "2" of the small classifier, signed by a
    new release key whose public half is the only trusted key.

    Returns (repository root, trusted key folder, the signing key).
    """
    from vigil.models.keys import generate_key_pair, load_private_key  # noqa: PLC0415

    trusted = folder / "trusted"
    pair = generate_key_pair(folder / "private", name="release")
    trusted.mkdir()
    (trusted / "release.pub").write_bytes(pair.public.read_bytes())
    key = load_private_key(pair.private)
    root = folder / "models"
    add_version(root, model, "1", tiny_classifier(1), key, activate=True)
    add_version(root, model, "2", tiny_classifier(2), key)
    return root, trusted, key


def classifier_workers(
    replicas: int = 2,
    *,
    threads: int = 1,
    lone_request: LoneRequest = LoneRequest.AUTO,
    **config: Any,
) -> NodeSpec:
    """The launch-file node of workers serving the small classifier on 32x32 frames; `config`
    sets other `WorkerConfig` fields."""
    engine = EngineConfig(
        task=Task.CLASSIFICATION,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        intra_op_threads=threads,
        lone_request=lone_request,
    )
    fields: dict[str, Any] = {"max_batch": 4, "max_queue_delay_us": 1000, **config}
    worker = WorkerConfig(warm_height=32, warm_width=32, engine=engine, **fields)
    return node("worker", worker, replicas=replicas)
