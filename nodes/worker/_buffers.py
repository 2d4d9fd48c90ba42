"""Reusable, 64-byte-aligned batch buffers (so a batch never allocates on the hot path)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["ALIGNMENT", "BufferPool", "aligned_empty"]

ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[np.generic]:
    """An uninitialised array whose data starts on a 64-byte boundary (a cache line, and
    what vectorised kernels and DMA engines want)."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dt).reshape(shape)


class BufferPool:
    """One aligned buffer per (shape, dtype), kept for the life of the worker."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[tuple[int, ...], str], npt.NDArray[np.generic]] = {}

    def get(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[np.generic]:
        """The buffer for this shape and dtype, allocated on first use."""
        key = (shape, np.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = aligned_empty(shape, dtype)
        return buf

    def __len__(self) -> int:
        return len(self._buffers)
