"""Aligned batch buffers and their pool."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.nodes.worker._buffers import ALIGNMENT, BufferPool, aligned_empty

SHAPES = [(1,), (3,), (7, 5), (1, 3, 33, 65), (4, 3, 384, 640), (5, 1, 1, 1), ()]
DTYPES = [np.uint8, np.float16, np.float32, np.float64, np.int64, np.complex128]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_aligned_empty_is_64_byte_aligned(shape: tuple[int, ...], dtype: type) -> None:
    """The array's data starts on a 64-byte boundary, with the asked shape and dtype."""
    array = aligned_empty(shape, dtype)
    assert array.ctypes.data % ALIGNMENT == 0
    assert (array.shape, array.dtype) == (shape, np.dtype(dtype))


@pytest.mark.parametrize("shape", SHAPES)
def test_aligned_empty_is_contiguous_and_writable(shape: tuple[int, ...]) -> None:
    """The array is C-contiguous and writable over its whole extent."""
    array = aligned_empty(shape, np.float32)
    assert array.flags.c_contiguous
    assert array.flags.writeable
    array.fill(1.5)
    assert np.all(array == 1.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_aligned_empty_allows_zero_size(dtype: type) -> None:
    """A shape with a zero dimension gives an empty array of that shape."""
    array = aligned_empty((2, 0, 5), dtype)
    assert (array.shape, array.size, array.dtype) == ((2, 0, 5), 0, np.dtype(dtype))


def test_aligned_arrays_do_not_overlap() -> None:
    """Two aligned arrays are independent memory."""
    first, second = aligned_empty((16,), np.uint8), aligned_empty((16,), np.uint8)
    first.fill(1)
    second.fill(2)
    assert np.all(first == 1)


def test_pool_reuses_a_buffer_per_shape_and_dtype() -> None:
    """The same shape and dtype give back the very same array."""
    pool = BufferPool()
    first = pool.get((2, 3, 32, 32), np.float32)
    assert pool.get((2, 3, 32, 32), "float32") is first
    assert len(pool) == 1


def test_pool_separates_shapes_and_dtypes() -> None:
    """Another shape or dtype gets its own buffer."""
    pool = BufferPool()
    base = pool.get((2, 3, 32, 32), np.float32)
    assert pool.get((2, 3, 32, 64), np.float32) is not base
    assert pool.get((2, 3, 32, 32), np.float16) is not base
    assert len(pool) == 3


def test_pool_buffers_are_aligned() -> None:
    """Every buffer from the pool is aligned."""
    pool = BufferPool()
    for batch in range(1, 9):
        assert pool.get((batch, 3, 17, 31), np.float16).ctypes.data % ALIGNMENT == 0
