"""The engine's wide and narrow sessions, and the sealed model they are built from."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vigil.nodes.worker import EngineConfig, Task
from vigil.nodes.worker._engine import Engine
from vigil.nodes.worker._sessions import sealed_model
from vigil.testing.modelgen import tiny_classifier

FRAMES = [np.full((32, 32, 3), v, dtype=np.uint8) for v in (10, 200, 90)]


def engine(threads: int, lanes: int = 0) -> Engine:
    config = EngineConfig(task=Task.CLASSIFICATION, intra_op_threads=threads, lanes=lanes)
    return Engine(tiny_classifier(3), config, name="tiny", version="1")


def test_wide_and_narrow_sessions_agree() -> None:
    """A batch gives the same outputs on the wide session and on the narrow one."""
    e = engine(threads=2)
    assert e.narrow is not e.session
    wide = e.run(FRAMES, [1, 2, 3], wide=True)
    narrow = e.run(FRAMES, [1, 2, 3], wide=False)
    assert [o.boxes[0].class_id for o in wide] == [o.boxes[0].class_id for o in narrow]
    np.testing.assert_allclose(
        [o.confidence for o in wide], [o.confidence for o in narrow], rtol=1e-5
    )


def test_threads_split_the_budget_between_lanes() -> None:
    """The wide session uses the whole budget, a narrow one a lane's share."""
    e = engine(threads=4, lanes=2)
    assert (e.lanes, e.threads(wide=True), e.threads(wide=False)) == (2, 4, 2)


def test_one_lane_builds_one_session() -> None:
    """Without lanes to fill there is no narrow session to pay for."""
    e = engine(threads=2, lanes=1)
    assert e.narrow is e.session
    assert e.lanes == 1


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd is Linux-only")
def test_sealed_model_holds_exactly_the_bytes_and_refuses_writes() -> None:
    """The session reads the verified bytes through a sealed memfd nobody can write to."""
    data = tiny_classifier(1)
    with sealed_model(data) as source:
        assert isinstance(source, str)
        assert Path(source).read_bytes() == data
        with pytest.raises(PermissionError), open(source, "r+b") as f:
            f.write(b"x")
