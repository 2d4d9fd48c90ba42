"""The GPU path of a worker: pinned staging, CuPy preprocessing, onnxruntime I/O binding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from vigil.nodes.worker._staging import StagingRing

__all__ = ["CudaPath", "cuda_available"]


def cuda_available() -> bool:
    """Whether CuPy imports and sees a device (the CUDA path needs both)."""
    try:
        import cupy  # noqa: PLC0415 - optional: only GPU targets install it

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except (ImportError, RuntimeError):
        return False
    except Exception:  # noqa: BLE001 - CuPy raises its own CUDARuntimeError without a GPU
        return False


# uint8 NHWC in, normalised NCHW out, in one pass: no float temporaries on the device.
_KERNEL = r"""
extern "C" __global__ void normalise(
    const unsigned char* src, OUT_T* dst, const float* scale, const float* bias,
    int n, int h, int w, int ph, int pw)
{
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long total = (long)n * 3 * h * w;
    if (i >= total) return;
    int x = i % w; long t = i / w;
    int y = t % h; t /= h;
    int c = t % 3; int b = t / 3;
    float v = src[(((long)b * h + y) * w + x) * 3 + c] * scale[c] + bias[c];
    dst[(((long)b * 3 + c) * ph + y) * pw + x] = (OUT_T)v;
}
"""


class _DeviceSlot:
    """One staging slot of the GPU path: pinned host frames, device frames and input, a copy
    stream and an I/O binding, each kept per batch shape."""

    def __init__(self, cp: Any, session: Any) -> None:
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.pinned: dict[tuple[int, ...], npt.NDArray[np.uint8]] = {}
        self.frames: dict[tuple[int, ...], Any] = {}
        self.inputs: dict[tuple[int, ...], Any] = {}
        self.binding = session.io_binding()


class CudaPath:
    """Runs a batch on the GPU without a pageable copy or a host-side float tensor.

    Frames are gathered into pinned host memory (one DMA to the device), normalised and laid
    out NCHW by one CUDA kernel straight into the session's input buffer (fp16 when the model
    is fp16), and the session reads and writes device memory through I/O binding. Two lanes
    call `run` at once, each in its own staging slot (`StagingRing`, double buffering): one
    batch's copy and normalisation, on the slot's own stream, overlap the other's compute on
    the session's stream.
    """

    def __init__(
        self,
        session: Any,
        *,
        input_name: str,
        dtype: type[np.floating[Any]],
        scale: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        slots: int = 2,
    ) -> None:
        import cupy as cp  # noqa: PLC0415 - optional: only GPU targets install it

        self.cp = cp
        self.session = session
        self.input_name = input_name
        self.dtype = np.dtype(dtype)
        self.output_names = [o.name for o in session.get_outputs()]
        out_t = "__half" if self.dtype == np.float16 else "float"
        source = _KERNEL.replace("OUT_T", out_t)
        if out_t == "__half":
            source = "#include <cuda_fp16.h>\n" + source
        self._kernel = cp.RawKernel(source, "normalise")
        self._scale = cp.asarray(np.asarray(scale, dtype=np.float32).ravel())
        self._bias = cp.asarray(np.asarray(bias, dtype=np.float32).ravel())
        self._ring = StagingRing([_DeviceSlot(cp, session) for _ in range(slots)])

    def _pinned_frames(self, slot: _DeviceSlot, shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
        buf = slot.pinned.get(shape)
        if buf is None:
            count = int(np.prod(shape))
            memory = self.cp.cuda.alloc_pinned_memory(count)
            buf = slot.pinned[shape] = np.frombuffer(memory, np.uint8, count).reshape(shape)
        return buf

    def run(
        self,
        images: Sequence[npt.NDArray[np.uint8]],
        padded: tuple[int, int],
        batch_to: int = 0,
    ) -> npt.NDArray[np.float32]:
        """Normalise and infer one batch of equally sized uint8 HWC frames on the GPU.

        With `batch_to`, the session always sees that batch size: a new input shape cost a
        quarter of a second on the GPU even after warm-up (measured on an H100), far more than
        computing a few padding images.
        """
        index, slot = self._ring.acquire()
        try:
            return self._run(slot, images, padded, batch_to)
        finally:
            # Outputs were copied back (a synchronising call): the device reads nothing of
            # this slot any more, so it needs no fence.
            self._ring.release(index)

    def _run(
        self,
        slot: _DeviceSlot,
        images: Sequence[npt.NDArray[np.uint8]],
        padded: tuple[int, int],
        batch_to: int,
    ) -> npt.NDArray[np.float32]:
        cp = self.cp
        n = len(images)
        rows = max(n, batch_to)
        h, w = images[0].shape[0], images[0].shape[1]
        ph, pw = padded
        staging = self._pinned_frames(slot, (n, h, w, 3))
        for i, img in enumerate(images):
            staging[i] = img
        frames = slot.frames.get(staging.shape)
        if frames is None:
            frames = slot.frames[staging.shape] = cp.empty(staging.shape, dtype=cp.uint8)
        shape = (rows, 3, ph, pw)
        batch = slot.inputs.get(shape)
        if batch is None:
            batch = slot.inputs[shape] = cp.zeros(shape, dtype=self.dtype)
        with slot.stream:
            frames.set(staging, stream=slot.stream)
            total = n * 3 * h * w
            threads = 256
            self._kernel(
                ((total + threads - 1) // threads,),
                (threads,),
                (frames, batch, self._scale, self._bias, n, h, w, ph, pw),
            )
        slot.stream.synchronize()  # onnxruntime runs on its own stream
        binding = slot.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_input(self.input_name, "cuda", 0, self.dtype, list(shape), batch.data.ptr)
        binding.bind_output(self.output_names[0], "cuda")
        self.session.run_with_iobinding(binding)
        result: npt.NDArray[np.float32] = np.asarray(
            binding.copy_outputs_to_cpu()[0][:n], dtype=np.float32
        )
        return result
