"""Background inference: the engine call of a batch beyond its peer's share runs on a thread
of lower CPU priority, with the same result, while pre- and post-processing stay put."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vigil.nodes.worker import EngineConfig, Task
from vigil.nodes.worker._background import BackgroundRunner, thread_nice
from vigil.nodes.worker._engine import Engine
from vigil.testing.modelgen import tiny_classifier

pytestmark = pytest.mark.verifies("SR-RL-002")


def test_calls_run_on_one_thread_at_the_background_nice_value() -> None:
    """Every call runs on the same thread, at the configured nice value (or the process's
    own, if that is higher); the caller's thread keeps its own."""
    before = thread_nice()
    with BackgroundRunner(10) as runner:
        seen = [runner.call(lambda: (threading.get_native_id(), thread_nice())) for _ in range(3)]
    assert len({tid for tid, _ in seen}) == 1
    assert seen[0][0] != threading.get_native_id()
    assert {nice for _, nice in seen} == {max(10, before)}
    assert thread_nice() == before


def test_errors_come_back_to_the_caller() -> None:
    """What the call raises, the caller gets (a batch's failure is answered per request)."""
    with BackgroundRunner(5) as runner, pytest.raises(ZeroDivisionError):
        runner.call(lambda: 1 // 0)


def test_an_engine_run_through_the_background_thread_gives_the_same_output() -> None:
    """A batch whose session call goes through the runner gives what it gives in the lane,
    and the session ran on the runner's thread."""
    engine = Engine(
        tiny_classifier(5), EngineConfig(task=Task.CLASSIFICATION), name="tiny", version="1"
    )
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(3)]
    threads: list[int] = []
    with BackgroundRunner(10) as runner:

        def via(fn, *args):  # type: ignore[no-untyped-def]
            def run():  # type: ignore[no-untyped-def]
                threads.append(threading.get_native_id())
                return fn(*args)

            return runner.call(run)

        background = engine.infer_frames(frames, wide=False, via=via)
    np.testing.assert_allclose(background, engine.infer_frames(frames, wide=False), rtol=1e-6)
    assert threads and threads[0] != threading.get_native_id()
