"""A consistent copy of a store file that a logger may be writing: what verify and readers use.

A running logger appends after its tail (harmless: the copy then ends in an open or torn
tail) and, at each roll, may reclaim the oldest group. The copy is taken as the superblock,
metadata and commit records, then the groups, then the metadata again: unchanged metadata
means no group was reclaimed meanwhile, so the copy holds every entry its commit record names.
Otherwise it is taken again; a store that rolls faster than it can be read is verified
without the groups reclaimed during the copy (their entries were evicted as it was read).
"""

from __future__ import annotations

import mmap
import os

from vigil.nodes.logger._format import StoreLayoutError
from vigil.nodes.logger._scan import StoreView, open_view

__all__ = ["read_snapshot"]

_ATTEMPTS = 4


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
