"""Staging slots taken in turn: never shared while in use, fenced before reuse."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vigil.nodes.worker import EngineConfig, Task
from vigil.nodes.worker._engine import Engine
from vigil.nodes.worker._staging import StagingRing
from vigil.testing.modelgen import tiny_classifier


def test_slots_alternate_oldest_freed_first() -> None:
    """Two slots are used in turn (double buffering), the least recently freed first."""
    ring = StagingRing(["a", "b"])
    order = []
    for _ in range(4):
        index, slot = ring.acquire()
        order.append(slot)
        ring.release(index)
    assert order == ["a", "b", "a", "b"]


def test_a_lent_slot_is_not_handed_out_until_released() -> None:
    """With every slot lent, the next batch waits for one to come back."""
    ring = StagingRing(["only"])
    index, _ = ring.acquire()
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(ring.acquire()[1]))
    waiter.start()
    deadline = time.monotonic() + 30
    while ring.waits == 0 and time.monotonic() < deadline:  # the waiter is now blocked
        time.sleep(0.001)
    assert ring.waits == 1 and got == []
    ring.release(index)
    waiter.join(30)
    assert got == ["only"]


def test_fence_is_waited_before_the_slot_is_reused() -> None:
    """A slot released with a fence (a device still reading it) is reused only after the
    fence has been waited on, by whoever takes it next."""
    ring = StagingRing(["a"])
    index, _ = ring.acquire()
    waited: list[str] = []
    ring.release(index, fence=lambda: waited.append("fence"))
    assert waited == []
    ring.acquire()
    assert waited == ["fence"]


def test_concurrent_batches_never_share_a_slot() -> None:
    """Many lanes taking and giving back two slots never hold the same one at once."""
    ring = StagingRing([0, 1])
    held: set[int] = set()
    guard = threading.Lock()
    clashes = []

    def lane(_: int) -> None:
        for _ in range(300):
            index, slot = ring.acquire()
            with guard:
                if slot in held:
                    clashes.append(slot)
                held.add(slot)
            with guard:
                held.discard(slot)
            ring.release(index)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lane, range(4)))
    assert clashes == []


def test_empty_ring_is_refused() -> None:
    """A ring without slots could never stage anything."""
    with pytest.raises(ValueError, match="at least one"):
        StagingRing([])


def test_engine_batches_staged_at_once_match_one_at_a_time() -> None:
    """Batches run from two lanes at once, each in its own staging slot, give the outputs
    of the same batches run one after the other."""
    config = EngineConfig(task=Task.CLASSIFICATION, intra_op_threads=2)
    engine = Engine(tiny_classifier(5), config, name="tiny", version="1")
    rng = np.random.default_rng(7)
    batches = [
        [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(3)] for _ in range(8)
    ]
    alone = [engine.infer_frames(b, wide=False) for b in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda b: engine.infer_frames(b, wide=False), batches))
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, t, rtol=1e-6)
