"""Shared-memory frame pools: a client on the ingest's host places frames there and sends
descriptors instead of the pixels (after Triton's system shared memory and iceoryx).

A pool is one file per client process, in a private directory on tmpfs: a header, one
generation counter per slot, then the slots. The client is its only writer. To send a frame
it takes a free slot, bumps the slot's generation, copies the pixels in and sends
`(pool, slot, generation)`; the slot is its again once the request has ended (its reply, or
its local deadline). The ingest checks a descriptor against the header alone (bounds and
generation, never a pixel); the worker reads the pixels in place and checks the generation
again afterwards, so a slot rewritten under it (a request already ended) is an error, never
a silent result.

Who may use a pool: its file is readable and writable by its owner only (and the nodes'
group when the run directory is shared with one), in a directory nobody else can list; the
ingest binds each pool to the first client that uses it (its session, which outlives a
reconnection) and refuses it from any other; pools whose owner process is gone are removed
by the ingest (`SharedFrames.reap`).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import re
import secrets
import stat
import struct
from collections import OrderedDict, deque
from pathlib import Path

import psutil

from vigil.bus.closing import Closing
from vigil.errors import VigilError
from vigil.schemas import SharedFrame

__all__ = [
    "POOL_NAME",
    "FramePool",
    "PoolView",
    "SharedFrameError",
    "SharedFrames",
    "ensure_pool_dir",
    "pool_dir",
    "sweep_stale_pools",
]

# No NumPy here: the ingest reads headers only and must stay free of it (memory, start-up).
_MAGIC = b"VGLPOOL1"
# magic, layout version, slots, slot bytes, owner pid, owner start time (s, as psutil has it)
_HEAD = struct.Struct("<8sIIQQd")
_GENERATION = struct.Struct("<Q")
_VERSION = 1
_PAGE = mmap.PAGESIZE
POOL_NAME = re.compile(r"^[0-9]{1,10}-[0-9a-f]{32}\.pool$")
_SHM_ROOT = Path("/dev/shm")
_RUN_LINK = "run"


class SharedFrameError(VigilError):
    """A descriptor that names no usable frame: which field, and the rule it broke."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def pool_dir(run_dir: Path) -> Path:
    """Where the pools of a run live: on tmpfs when the host has one (a mapped file on disk
    would be written back to it), else inside the run directory."""
    run_dir = Path(run_dir).resolve()
    if _SHM_ROOT.is_dir():
        digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:24]
        return _SHM_ROOT / f"vigil-{digest}"
    return run_dir / "shm"


def ensure_pool_dir(run_dir: Path) -> Path:
    """Create the pool directory if needed: private to its owner, or shared with the run
    directory's group (setgid, so pools inherit it) when the run directory is."""
    path = pool_dir(run_dir)
    run_mode = Path(run_dir).stat()
    shared = bool(run_mode.st_mode & stat.S_IRWXG)
    # Group members may create and open pools by name but not list them (no read bit).
    mode = 0o2730 if shared else 0o700
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        return path
    os.chmod(path, mode)
    if shared:
        with contextlib.suppress(PermissionError):
            os.chown(path, -1, run_mode.st_gid)
    # Which run it serves: once that run directory is gone, so may this one be.
    with contextlib.suppress(FileExistsError):
        (path / _RUN_LINK).symlink_to(Path(run_dir).resolve())
    return path


def _layout(slots: int) -> int:
    """Byte offset of the first slot (the header and generations, page aligned)."""
    head = _HEAD.size + 8 * slots
    return -(-head // _PAGE) * _PAGE


class FramePool(Closing):
    """A client's pool: its slots, which of them are free, and the frames written into them."""

    def __init__(self, directory: Path, *, slots: int, slot_bytes: int) -> None:
        if slots < 1 or slot_bytes < 1:
            raise ValueError("a pool needs at least one slot of at least one byte")
        self.slots = slots
        self.slot_bytes = -(-slot_bytes // _PAGE) * _PAGE
        self.name = f"{os.getpid()}-{secrets.token_hex(16)}.pool"
        self.path = Path(directory) / self.name
        self._data = _layout(slots)
        size = self._data + self.slots * self.slot_bytes
        shared = Path(directory).stat().st_mode & stat.S_IRWXG
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if shared:
                os.fchmod(fd, 0o660)  # the nodes' group reads it; nobody else does
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        started = psutil.Process().create_time()
        _HEAD.pack_into(
            self._map, 0, _MAGIC, _VERSION, slots, self.slot_bytes, os.getpid(), started
        )
        self._free = deque(range(slots))
        self._closed = False

    @property
    def free(self) -> int:
        """Slots free to take."""
        return len(self._free)

    def acquire(self) -> int | None:
        """A free slot, or None when every slot is lent to a request in flight."""
        return self._free.popleft() if self._free else None

    def release(self, slot: int) -> None:
        """Give a slot back once its request has ended."""
        self._free.append(slot)

    def put(self, slot: int, frame: memoryview) -> SharedFrame:
        """Write a C-contiguous frame into `slot` under a new generation; its descriptor."""
        pixels = frame.cast("B")
        if pixels.nbytes > self.slot_bytes:
            raise ValueError(f"frame of {pixels.nbytes} bytes exceeds the slot size")
        at = _HEAD.size + 8 * slot
        generation = _GENERATION.unpack_from(self._map, at)[0] + 1
        # The generation moves first: a reader still holding the old one sees it change.
        _GENERATION.pack_into(self._map, at, generation)
        start = self._data + slot * self.slot_bytes
        self._map[start : start + pixels.nbytes] = pixels
        return SharedFrame(pool=self.name, slot=slot, generation=generation)

    def copy(self, slot: int, nbytes: int) -> bytes:
        """The first `nbytes` of `slot`, copied out (for a link that cannot read the pool)."""
        start = self._data + slot * self.slot_bytes
        return self._map[start : start + min(nbytes, self.slot_bytes)]

    def close(self) -> None:
        """Remove the pool: its file first (nobody opens it again), then this mapping."""
        if self._closed:
            return
        self._closed = True
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(BufferError):  # a view still held: the mapping outlives it
            self._map.close()


class PoolView(Closing):
    """A pool opened by a node, mapped read-only."""

    def __init__(self, path: Path) -> None:
        try:
            # Never through a link: a name must not lead to another client's pool.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SharedFrameError(
                "$.shm.pool", "no such pool (closed, or its client is gone)"
            ) from None
        except PermissionError:
            raise SharedFrameError("$.shm.pool", "pool not readable by this node") from None
        except OSError:  # ELOOP: a symbolic link
            raise SharedFrameError("$.shm.pool", "not a frame pool") from None
        try:
            info = os.fstat(fd)
            size = info.st_size
            if not stat.S_ISREG(info.st_mode) or size < _PAGE:
                raise SharedFrameError("$.shm.pool", "not a frame pool")
            self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, version, slots, slot_bytes, pid, started = _HEAD.unpack_from(self._map, 0)
        if magic != _MAGIC or version != _VERSION or size != _layout(slots) + slots * slot_bytes:
            self._map.close()
            raise SharedFrameError("$.shm.pool", "not a frame pool of this layout")
        self.path = path
        self.slots: int = slots
        self.slot_bytes: int = slot_bytes
        self.owner_pid: int = pid
        self.owner_started: float = started
        self._data = _layout(slots)
        self._view = memoryview(self._map)  # read-only, like the mapping

    def generation(self, slot: int) -> int:
        """The slot's generation now."""
        value: int = _GENERATION.unpack_from(self._map, _HEAD.size + 8 * slot)[0]
        return value

    def frame(self, slot: int, nbytes: int) -> memoryview:
        """The slot's first `nbytes` bytes, read-only and in place."""
        start = self._data + slot * self.slot_bytes
        return self._view[start : start + nbytes]

    def owner_alive(self) -> bool:
        """Whether the process that made the pool still runs (a reused pid does not count)."""
        try:
            proc = psutil.Process(self.owner_pid)
            return abs(proc.create_time() - self.owner_started) < 1.0 and proc.is_running()
        except psutil.NoSuchProcess:
            return False

    def close(self) -> None:
        """Unmap (later, if a frame view is still in use)."""
        with contextlib.suppress(BufferError):
            self._view.release()
            self._map.close()


class SharedFrames(Closing):
    """The pools a node reads frames from: opened on first use, kept while they are used.

    `check` validates a descriptor against the pool's header (the ingest), `frame` maps its
    pixels (the worker), `unchanged` says whether they stayed as they were read.
    """

    def __init__(
        self, directory: Path, *, max_pools: int = 64, remove_directory: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.max_pools = max_pools
        # The ingest removes the run's pool directory when it closes, if nothing is left.
        self._remove_directory = remove_directory
        self._open: OrderedDict[str, PoolView] = OrderedDict()

    def pool(self, name: str) -> PoolView:
        """The open pool `name`, opening it (and closing the least recently used) if needed."""
        view = self._open.get(name)
        if view is not None:
            self._open.move_to_end(name)
            return view
        if not POOL_NAME.match(name):
            raise SharedFrameError("$.shm.pool", "not a pool name")
        view = self._open[name] = PoolView(self.directory / name)
        while len(self._open) > self.max_pools:
            self._open.popitem(last=False)[1].close()
        return view

    def check(self, ref: SharedFrame, nbytes: int) -> PoolView:
        """The pool of a descriptor that names a current frame of `nbytes`; else the error.

        Reads the header only: bounds, size and generation.
        """
        view = self.pool(ref.pool)
        if ref.slot >= view.slots:
            raise SharedFrameError("$.shm.slot", f"pool has {view.slots} slots")
        if nbytes > view.slot_bytes:
            raise SharedFrameError("$.shm", f"frame of {nbytes} bytes exceeds the slot size")
        if view.generation(ref.slot) != ref.generation:
            raise SharedFrameError("$.shm.generation", "slot rewritten since (stale descriptor)")
        return view

    def frame(self, ref: SharedFrame, nbytes: int) -> memoryview:
        """A checked descriptor's `nbytes` of pixels, read-only and in place."""
        return self.check(ref, nbytes).frame(ref.slot, nbytes)

    def unchanged(self, ref: SharedFrame) -> bool:
        """Whether the slot still holds the generation the descriptor names."""
        view = self._open.get(ref.pool)
        return view is not None and view.generation(ref.slot) == ref.generation

    def prune(self) -> list[str]:
        """Close the pools whose file is gone (removed by their client or the ingest), so
        their memory goes back to the system; their names."""
        gone = [name for name, view in self._open.items() if not view.path.exists()]
        for name in gone:
            self.forget(name)
        return gone

    def exists(self, name: str) -> bool:
        """Whether a pool of that name is in the directory now."""
        return bool(POOL_NAME.match(name)) and (self.directory / name).exists()

    def forget(self, name: str) -> None:
        """Close a pool (its owner is gone or it was removed)."""
        view = self._open.pop(name, None)
        if view is not None:
            view.close()

    def reap(self) -> list[str]:
        """Remove every pool in the directory whose owner process is gone; their names."""
        return _reap(self.directory, self._open)

    def close(self) -> None:
        """Close every pool (and remove an empty directory, if asked to)."""
        for view in self._open.values():
            view.close()
        self._open.clear()
        if self._remove_directory and not any(
            POOL_NAME.match(p.name) for p in _listing(self.directory)
        ):
            with contextlib.suppress(OSError):  # gone already, or a pool just arrived
                (self.directory / _RUN_LINK).unlink(missing_ok=True)
                self.directory.rmdir()


def _listing(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(directory))
    except OSError:
        return []


def sweep_stale_pools(root: Path = _SHM_ROOT) -> list[str]:
    """Remove what runs on this host left behind, in every pool directory this process may
    write: the pools of client processes that are gone (a client killed after its run ended
    leaves its pool behind: no ingest would ever remove it), and the whole directory of a
    run whose run directory no longer exists. The names of the pools removed."""
    gone: list[str] = []
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for entry in os.scandir(root):
            if not entry.name.startswith("vigil-") or not entry.is_dir(follow_symlinks=False):
                continue
            directory = Path(entry.path)
            run = directory / _RUN_LINK
            if run.is_symlink() and not run.exists():
                gone += _remove_run(directory)
            else:
                gone += _reap(directory, {})
    return gone


def _remove_run(directory: Path) -> list[str]:
    """Remove the pool directory of a run that is over (its clients' mappings stay valid
    until they let go; no node will read them again)."""
    gone = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                if POOL_NAME.match(entry.name):
                    gone.append(entry.name)
        directory.rmdir()
    return gone


def _reap(directory: Path, open_views: dict[str, PoolView]) -> list[str]:
    """Remove the pools in `directory` whose owner is gone (closing `open_views` of them)."""
    gone = []
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for entry in os.scandir(directory):
            if not POOL_NAME.match(entry.name):
                continue
            try:
                view = open_views.get(entry.name) or PoolView(Path(entry.path))
            except SharedFrameError:
                continue
            if view.owner_alive():
                if entry.name not in open_views:
                    view.close()
                continue
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(entry.path)
            open_views.pop(entry.name, None)
            view.close()
            gone.append(entry.name)
    return gone
