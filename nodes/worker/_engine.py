"""The inference engine: a model version's sessions, pre- and post-processing of a batch."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from vigil.nodes.worker._buffers import BufferPool
from vigil.nodes.worker._contract import Device, EngineConfig, Task
from vigil.nodes.worker._cuda import CudaPath, cuda_available
from vigil.nodes.worker._postprocess import classification, text_detection
from vigil.nodes.worker._sessions import build_session, release_freed_memory, sealed_model
from vigil.nodes.worker._staging import StagingRing
from vigil.schemas import PerceptionOutput

__all__ = ["Engine", "Via"]

# Runs a call somewhere else (another thread) and returns what it returned.
Via = Callable[..., Any]


# cuDNN's exhaustive algorithm search runs again for every new input shape, and a dynamic
# batcher makes new shapes: it stalled serving for hundreds of milliseconds at a time.
_CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1"}


def _providers(device: Device) -> list[str | tuple[str, dict[str, str]]]:
    available = ort.get_available_providers()
    if device is Device.CPU:
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", _CUDA_OPTIONS), "CPUExecutionProvider"]
    if device is Device.CUDA:
        raise RuntimeError("CUDAExecutionProvider is not available in this onnxruntime build")
    return ["CPUExecutionProvider"]


class Engine:
    """A loaded model version: its sessions and everything they need to serve a batch.

    On the CPU, with more than one lane, it holds two sessions of the same bytes: the *wide*
    one uses the whole core budget (a lone request on an idle worker), the *narrow* one a
    lane's share of it, run from several lanes at once (parallel batches under load).
    onnxruntime fixes a session's thread count when it is built, hence two.
    """

    def __init__(self, model: bytes, config: EngineConfig, *, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.sha256 = hashlib.sha256(model).hexdigest()
        self.config = config
        providers = _providers(config.device)
        on_cpu = providers[0] == "CPUExecutionProvider"
        # On a GPU, two lanes double-buffer: one batch stages while the other computes.
        self.lanes = min(config.cpu_lanes(), config.lane_count()) if on_cpu else 2
        self.wide_threads = config.cores()
        self.narrow_threads = max(1, self.wide_threads // self.lanes)
        # Built from exactly the bytes that were verified (see `sealed_model`).
        with sealed_model(model) as source:
            self.session = build_session(source, threads=self.wide_threads, providers=providers)
            self.narrow = self.session
            if on_cpu and self.lanes > 1:
                self.narrow = build_session(
                    source, threads=self.narrow_threads, providers=providers
                )
        release_freed_memory()
        self.providers: list[str] = self.session.get_providers()
        model_input = self.session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.input_shape: list[int | str | None] = list(model_input.shape)
        self.dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        std = np.asarray(config.std, dtype=np.float32)
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
        self._bias = (-np.asarray(config.mean, dtype=np.float32) / std)[:, None, None]
        # One staging slot per lane: batches running at once never share an input buffer.
        # Padding stays zero between batches only on the CPU path, which refills it; the GPU
        # path keeps its own device buffers (zeroed once, written only inside the frame).
        self._staging = StagingRing([BufferPool() for _ in range(self.lanes)])
        self._cuda: CudaPath | None = None
        # On the GPU every batch is padded to this size (0: as formed); the worker sets it to
        # its max_batch, so the session sees one input shape.
        self.batch_to = 0
        if self.providers[0] == "CUDAExecutionProvider" and cuda_available():
            self._cuda = CudaPath(
                self.session,
                input_name=self.input_name,
                dtype=self.dtype,
                scale=self._scale,
                bias=self._bias,
            )

    def threads(self, *, wide: bool) -> int:
        """The intra-op threads a batch runs with on the wide or the narrow session."""
        return self.wide_threads if wide or self.narrow is self.session else self.narrow_threads

    @property
    def split_batches(self) -> bool:
        """Whether load is shared out as equal smaller batches (CPU: every core busy) or as
        full ones (GPU: a device wants the largest batch it can get)."""
        return self._cuda is None

    @property
    def on_gpu(self) -> bool:
        """Whether batches run through the CUDA path (pinned memory, CuPy, I/O binding)."""
        return self._cuda is not None

    def fixed_size(self) -> tuple[int, int] | None:
        """(height, width) when the model only takes one input size."""
        h, w = self.input_shape[2], self.input_shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """The input size a frame of this size is padded to."""
        fixed = self.fixed_size()
        if fixed is not None:
            return fixed
        step = self.config.pad_to
        return (-(-height // step) * step, -(-width // step) * step)

    def preprocess(
        self, images: Sequence[npt.NDArray[np.uint8]], buffers: BufferPool
    ) -> npt.NDArray[np.generic]:
        """uint8 HWC frames -> one normalised NCHW batch in a reused aligned buffer."""
        height = max(img.shape[0] for img in images)
        width = max(img.shape[1] for img in images)
        ph, pw = self.padded(height, width)
        batch = buffers.get((len(images), 3, ph, pw), self.dtype)
        batch.fill(0)
        for i, img in enumerate(images):
            h, w = img.shape[0], img.shape[1]
            out = batch[i, :, :h, :w]
            np.multiply(img.transpose(2, 0, 1), self._scale, out=out, casting="unsafe")
            np.add(out, self._bias, out=out, casting="unsafe")
        return batch

    def infer(
        self, batch: npt.NDArray[np.generic], *, wide: bool = True, via: Via | None = None
    ) -> npt.NDArray[np.float32]:
        """Run the wide or the narrow session on a prepared batch; returns the first output.

        `via` runs the session call elsewhere (on the background thread) and waits for it.
        """
        session = self.session if wide else self.narrow
        feed = {self.input_name: batch}
        outputs = via(session.run, None, feed) if via is not None else session.run(None, feed)
        result: npt.NDArray[np.float32] = np.asarray(outputs[0], dtype=np.float32)
        return result

    def postprocess(
        self,
        output: npt.NDArray[np.float32],
        sizes: Sequence[tuple[int, int]],
        timestamps_us: Sequence[int],
    ) -> list[PerceptionOutput]:
        """One perception output per image of the batch."""
        if self.config.task is Task.CLASSIFICATION:
            return [
                classification(output[i], h, w, ts)
                for i, ((h, w), ts) in enumerate(zip(sizes, timestamps_us, strict=True))
            ]
        return [
            text_detection(output[i, 0], h, w, ts)
            for i, ((h, w), ts) in enumerate(zip(sizes, timestamps_us, strict=True))
        ]

    def infer_frames(
        self,
        images: Sequence[npt.NDArray[np.uint8]],
        *,
        wide: bool = True,
        via: Via | None = None,
    ) -> npt.NDArray[np.float32]:
        """Raw model output for a batch of uint8 HWC frames, on the GPU path when there is one.

        Safe to call from several lanes at once: each batch stages in its own slot. `via`
        runs the CPU session call elsewhere (see `infer`).
        """
        if self._cuda is not None and all(img.shape == images[0].shape for img in images):
            h, w = images[0].shape[0], images[0].shape[1]
            return self._cuda.run(images, self.padded(h, w), self.batch_to)
        with self._staging.slot() as buffers:
            # The session returns new arrays: the slot is free again once it has run.
            return self.infer(self.preprocess(images, buffers), wide=wide, via=via)

    def run(
        self,
        images: Sequence[npt.NDArray[np.uint8]],
        timestamps_us: Sequence[int],
        *,
        wide: bool = True,
    ) -> list[PerceptionOutput]:
        """Pre-process, infer and post-process one batch of frames."""
        output = self.infer_frames(images, wide=wide)
        return self.postprocess(output, [img.shape[:2] for img in images], timestamps_us)

    def warm(self, height: int, width: int, max_batch: int = 1) -> None:
        """Run a first batch so the first real request pays no start-up cost; on the GPU this
        also fixes the batch size every batch is padded to (`max_batch`)."""
        fixed = self.fixed_size()
        h, w = fixed if fixed is not None else (height, width)
        frame = np.zeros((h, w, 3), dtype=np.uint8)
        if self.on_gpu:
            self.batch_to = max_batch
        self.run([frame], [1])
        if self.narrow is not self.session:
            self.run([frame], [1], wide=False)
