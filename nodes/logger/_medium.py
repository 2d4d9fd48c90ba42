"""The byte medium under the store: a file mapped for reading, written with pwrite, and synced
with msync outside the GIL."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import shutil
from typing import Protocol

from vigil.nodes.logger._errors import StoreNoSpace

__all__ = ["Image", "Medium", "MmapMedium"]

# Anything the scanner can unpack and slice: the live mmap, a bytes image, a simulated disk.
Image = bytes | bytearray | memoryview | mmap.mmap

_MS_SYNC = 4


class Medium(Protocol):
    """What the store needs from its storage; `vigil.testing.crashsim` simulates a disk."""

    @property
    def size(self) -> int:
        """Bytes in the medium."""
        ...

    @property
    def image(self) -> Image:
        """The current content, readable in place."""
        ...

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Store `data` at `offset` (not durable until a `sync` covering it returns); `data` is
        read during the call only, so the caller may reuse its buffer."""
        ...

    def sync(self, offset: int, length: int) -> None:
        """Make `[offset, offset + length)` durable; safe to call from one other thread."""
        ...

    def close(self) -> None:
        """Release the medium; idempotent."""
        ...


class MmapMedium:
    """A file mapped shared into memory; `sync` is msync(MS_SYNC) called through ctypes.

    Writes of a page or more go into the same page cache with pwrite rather than through the
    mapping: a store through the mapping takes a page fault for every page it dirties (the
    filesystem's page_mkwrite, again after every msync cleaned it), which on ext4 cost about a
    third of the append rate of bursts. Smaller writes (one entry) are copied through the
    mapping, where a system call would cost more than the fault it saves. The mapping shows
    what pwrite stored at once (one page cache), so reads, recovery and the read-back check of
    group headers use it unchanged, and a killed process loses nothing the kernel already
    holds either way.

    `mmap.flush` would hold the GIL through the whole msync; the ctypes call releases it, so a
    group commit overlaps with sealing the next entries.
    """

    def __init__(self, path: str, size: int | None) -> None:
        """Open the store file; when `size` is given and the file is new or empty, create it
        at that size first. StoreNoSpace when the file system cannot hold it, and then the
        file is left as it was (a new one is removed)."""
        made = False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if size is None:
                raise
            _check_space(path, size)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            made = True
        try:
            current = os.fstat(fd).st_size
            self.created = False
            if current == 0 and size is not None:
                _allocate(fd, path, size)
                current = size
                self.created = True
            if current == 0:
                raise FileNotFoundError(path)
            self._map = mmap.mmap(fd, current, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            if made:
                os.unlink(path)
            raise
        self._fd = fd
        self._size = current
        self._anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(self._map)
        self._base = ctypes.addressof(self._anchor)
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        msync = libc.msync
        msync.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        msync.restype = ctypes.c_int
        self._msync = msync
        self._page = mmap.PAGESIZE

    @property
    def size(self) -> int:
        """Bytes in the file."""
        return self._size

    @property
    def image(self) -> mmap.mmap:
        """The mapping itself."""
        return self._map

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Store `data` at `offset` in the file's page cache; OSError when the kernel refuses."""
        if offset < 0 or offset + len(data) > self._size:
            raise ValueError(f"write of {len(data)} bytes at {offset} outside the medium")
        if len(data) < self._page:
            # A small write is cheaper as a copy into the mapping than as a system call.
            self._map[offset : offset + len(data)] = data
            return
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def sync(self, offset: int, length: int) -> None:
        """msync(MS_SYNC) over the pages that cover the range; OSError on failure."""
        start = offset - offset % self._page
        end = min(offset + length, self._size)
        if end <= start:
            return
        if self._msync(self._base + start, end - start, _MS_SYNC) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def close(self) -> None:
        """Unmap and close the file; idempotent."""
        if self._anchor is None:
            return
        # The ctypes view exports the mapping's buffer; it must go before the mapping closes.
        self._anchor = None
        self._map.close()
        os.close(self._fd)


def _check_space(path: str, size: int) -> None:
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if free < size:
        raise StoreNoSpace(path, size, free)


def _allocate(fd: int, path: str, size: int) -> None:
    # Reserve the blocks now: a write into a hole of a full disk is a SIGBUS later.
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        os.ftruncate(fd, 0)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
            raise StoreNoSpace(path, size, free, exc) from exc
        raise
