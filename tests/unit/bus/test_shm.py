"""Shared-memory frame pools: layout, descriptors, checks, permissions and clean-up."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vigil.bus import shm
from vigil.bus.shm import (
    FramePool,
    SharedFrameError,
    SharedFrames,
    ensure_pool_dir,
    pool_dir,
    sweep_stale_pools,
)
from vigil.schemas import SharedFrame

FRAME = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


@pytest.fixture(autouse=True)
def shm_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pools of these tests live under the test's own folder, not the host's /dev/shm."""
    root = tmp_path / "shm"
    root.mkdir()
    monkeypatch.setattr(shm, "_SHM_ROOT", root)
    return root


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return ensure_pool_dir(run)


def test_frame_is_read_in_place_under_its_generation(directory: Path) -> None:
    """A node reads the very bytes the client wrote, read-only and without a copy."""
    with (
        FramePool(directory, slots=2, slot_bytes=FRAME.nbytes) as pool,
        SharedFrames(directory) as frames,
    ):
        ref = pool.put(1, FRAME.data)
        assert (ref.slot, ref.generation) == (1, 1)
        seen = np.frombuffer(frames.frame(ref, FRAME.nbytes), np.uint8).reshape(FRAME.shape)
        assert np.array_equal(seen, FRAME)
        assert not seen.flags.writeable
        pool.put(1, FRAME[::-1].copy().data)
        assert np.array_equal(seen, FRAME[::-1])  # the same memory, not a copy


def test_rewritten_slot_is_seen_as_changed(directory: Path) -> None:
    """Writing a slot again bumps its generation: an older descriptor is stale."""
    with FramePool(directory, slots=1, slot_bytes=64) as pool, SharedFrames(directory) as frames:
        old = pool.put(0, FRAME.data)
        frames.frame(old, FRAME.nbytes)
        assert frames.unchanged(old)
        new = pool.put(0, FRAME.data)
        assert new.generation == old.generation + 1
        assert not frames.unchanged(old)
        with pytest.raises(SharedFrameError) as stale:
            frames.check(old, FRAME.nbytes)
        assert stale.value.field == "$.shm.generation"


def test_descriptor_outside_the_pool_is_refused(directory: Path) -> None:
    """A slot past the end, an unknown pool, or a name that is no pool's is an error."""
    with FramePool(directory, slots=2, slot_bytes=64) as pool, SharedFrames(directory) as frames:
        ref = pool.put(0, FRAME.data)
        unknown = SharedFrame(pool="123-" + "0" * 32 + ".pool", slot=0, generation=1)
        for bad, field in (
            (SharedFrame(pool=ref.pool, slot=2, generation=1), "$.shm.slot"),
            (unknown, "$.shm.pool"),
        ):
            with pytest.raises(SharedFrameError) as error:
                frames.check(bad, FRAME.nbytes)
            assert error.value.field == field
        with pytest.raises(SharedFrameError, match="not a pool name"):
            frames.pool("../../etc/passwd")


def test_frame_larger_than_a_slot_is_refused(directory: Path) -> None:
    """A descriptor claiming more bytes than a slot holds is refused, and so is writing one."""
    with FramePool(directory, slots=1, slot_bytes=16) as pool, SharedFrames(directory) as frames:
        ref = pool.put(0, np.zeros(16, np.uint8).data)
        with pytest.raises(SharedFrameError):
            frames.check(ref, pool.slot_bytes + 1)
        with pytest.raises(ValueError, match="slot size"):
            pool.put(0, np.zeros(pool.slot_bytes + 1, np.uint8).data)


def test_slots_are_lent_and_given_back(directory: Path) -> None:
    """acquire() hands out each slot once until it is released."""
    with FramePool(directory, slots=2, slot_bytes=16) as pool:
        a, b = pool.acquire(), pool.acquire()
        assert {a, b} == {0, 1} and pool.acquire() is None
        pool.release(a)  # type: ignore[arg-type]
        assert pool.acquire() == a


def test_pool_is_private_to_its_owner(directory: Path, shm_root: Path) -> None:
    """The pool directory and files are for their owner only (no group, no others)."""
    assert directory.parent == shm_root
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    with FramePool(directory, slots=1, slot_bytes=16) as pool:
        assert stat.S_IMODE(pool.path.stat().st_mode) == 0o600


def test_pool_dir_is_one_per_run(tmp_path: Path) -> None:
    """Two runs never share a pool directory; one run always finds the same."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert pool_dir(tmp_path / "a") == pool_dir(tmp_path / "a")
    assert pool_dir(tmp_path / "a") != pool_dir(tmp_path / "b")


def test_closing_removes_the_pool(directory: Path) -> None:
    """A closed pool's file is gone; a node then refuses its descriptors."""
    pool = FramePool(directory, slots=1, slot_bytes=16)
    ref = pool.put(0, np.zeros(4, np.uint8).data)
    pool.close()
    assert not pool.path.exists()
    with SharedFrames(directory) as frames, pytest.raises(SharedFrameError):
        frames.check(ref, 4)


_ABANDON = """
import sys
from pathlib import Path
from vigil.bus.shm import FramePool
pool = FramePool(Path(sys.argv[1]), slots=1, slot_bytes=16)
print(pool.name, flush=True)
"""


def test_reap_removes_pools_of_dead_owners_only(directory: Path) -> None:
    """reap() removes a pool whose process is gone and keeps one whose process runs."""
    out = subprocess.run(
        [sys.executable, "-c", _ABANDON, str(directory)], capture_output=True, check=True
    )
    abandoned = directory / out.stdout.decode().strip()
    assert abandoned.exists()  # its process exited without closing it
    with FramePool(directory, slots=1, slot_bytes=16) as alive, SharedFrames(directory) as frames:
        assert frames.reap() == [abandoned.name]
        assert not abandoned.exists()
        assert alive.path.exists()


def test_prune_lets_go_of_removed_pools(directory: Path) -> None:
    """A node closes its mapping of a pool whose file was removed."""
    with SharedFrames(directory) as frames:
        pool = FramePool(directory, slots=1, slot_bytes=16)
        ref = pool.put(0, np.zeros(4, np.uint8).data)
        frames.check(ref, 4)
        pool.close()
        frames.prune()
        assert not frames.unchanged(ref)  # no longer open


def test_sweep_removes_dead_pools_of_every_run(shm_root: Path) -> None:
    """Pools a dead client left in any run's directory are swept; live ones stay."""
    root = shm_root
    one, two = root / "vigil-aaaa", root / "vigil-bbbb"
    one.mkdir()
    two.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", _ABANDON, str(two)], capture_output=True, check=True
    )
    abandoned = two / out.stdout.decode().strip()
    with FramePool(one, slots=1, slot_bytes=16) as alive:
        assert sweep_stale_pools(root) == [abandoned.name]
        assert alive.path.exists() and not abandoned.exists()


def test_owner_of_the_directory_removes_it_when_empty(directory: Path) -> None:
    """The ingest's view removes the run's pool directory at close, unless pools remain."""
    pool = FramePool(directory, slots=1, slot_bytes=16)
    SharedFrames(directory, remove_directory=True).close()
    assert directory.exists()  # a pool is still there
    pool.close()
    SharedFrames(directory, remove_directory=True).close()
    assert not directory.exists()


def test_sweep_removes_the_directory_of_a_run_that_is_over(tmp_path: Path, shm_root: Path) -> None:
    """Once a run directory is gone, its pool directory (and any pool in it) goes too."""
    run = tmp_path / "finished"
    run.mkdir()
    directory = ensure_pool_dir(run)
    root = shm_root
    pool = FramePool(directory, slots=1, slot_bytes=16)
    assert sweep_stale_pools(root) == []  # the run is on: nothing to do
    run.rmdir()
    assert sweep_stale_pools(root) == [pool.name]
    assert not directory.exists()
    pool.close()


def test_a_link_to_another_pool_is_refused(directory: Path) -> None:
    """A pool name that is a symbolic link (to someone else's pool) is never followed."""
    with FramePool(directory, slots=1, slot_bytes=16) as victim, SharedFrames(directory) as frames:
        ref = victim.put(0, np.zeros(4, np.uint8).data)
        link = directory / ("1-" + "a" * 32 + ".pool")
        link.symlink_to(victim.path)
        with pytest.raises(SharedFrameError, match="not a frame pool"):
            frames.check(SharedFrame(pool=link.name, slot=0, generation=ref.generation), 4)
