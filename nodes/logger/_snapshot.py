"""Reading a store file that a logger may be writing, consistently: what verify and readers use.

A running logger appends after its tail (harmless: the reader then sees an open or torn tail)
and, at each roll, may reclaim the oldest group. Whatever reads the store in place checks
afterwards that the metadata did not change (`read_mapped`): unchanged metadata means no group
was reclaimed meanwhile, so what it read holds every entry its commit record names. Otherwise
it reads a copy (`read_snapshot`), taken as the superblock, metadata and commit records, then
the groups, then the metadata again, and taken again while that changed; a store that rolls
faster than it can be copied is verified without the groups reclaimed during the copy (their
entries were evicted as it was read).
"""

from __future__ import annotations

import mmap
import os

from vigil.nodes.logger._format import StoreLayoutError, decode_superblock
from vigil.nodes.logger._scan import StoreView, open_view

__all__ = ["MappedStore", "read_snapshot"]

_ATTEMPTS = 4


class MappedStore:
    """A read-only mapping of a store file and a view over it; `unchanged()` says whether its
    metadata is still what the view was opened on. Closed on every path."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = path
        self._map: mmap.mmap | None = None
        self._head = b""

    def __enter__(self) -> StoreView:
        with open(self._path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise StoreLayoutError(f"{os.fspath(self._path)} is empty")
            self._map = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        # The metadata is copied before the view decodes it: a change between the two, which
        # the view may already have decoded, then also fails `unchanged()`.
        geo, _, _ = decode_superblock(self._map, mmap.PAGESIZE)
        self._head = self._map[: geo.commit_at]
        return open_view(self._map, mmap.PAGESIZE)

    def unchanged(self) -> bool:
        """True when the metadata reads as it did when the view was opened."""
        return self._map is not None and self._map[: len(self._head)] == self._head

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            self._map.close()


def read_snapshot(path: str | os.PathLike[str]) -> StoreView:
    """A view over a consistent in-memory copy of the store at `path`.

    StoreLayoutError when the file is empty, too short or not a store; OSError when it
    cannot be read.
    """
    with open(path, "rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        if size == 0:
            raise StoreLayoutError(f"{os.fspath(path)} is empty")
        for _ in range(_ATTEMPTS):
            image = _read(fd, 0, size)
            view = open_view(image, mmap.PAGESIZE)
            head = view.geo.commit_at
            again = _read(fd, 0, head)
            if again == image[:head]:
                return view
        later = open_view(again + image[head:], mmap.PAGESIZE)
    epochs, now = view.meta.groups["epoch"], later.meta.groups["epoch"]
    view.reclaimed = frozenset(int(g) for g in range(len(epochs)) if epochs[g] != now[g])
    return view


def _read(fd: int, offset: int, length: int) -> bytes:
    parts = []
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 24), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)
