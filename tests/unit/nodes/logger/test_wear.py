"""The wear-levelling policy, driven without I/O."""

from __future__ import annotations

import random

import pytest

from vigil.nodes.logger._wear import NoHealthyGroup, WearLeveller

pytestmark = pytest.mark.verifies("SR-LOG-002")


def test_a_million_allocations_stay_within_ten_percent() -> None:
    """After 1,000,000 allocations, with groups going bad and being released, max/min <= 1.1."""
    groups = 64
    level = WearLeveller([0] * groups, [0] * groups, [False] * groups)
    rng = random.Random(7)
    for step in range(1_000_000):
        level.take()
        if step % 100_000 == 50_000:
            level.mark_bad(rng.choice([g for g in range(groups) if not level.bad[g]]))
        if step % 997 == 0 and len(level.live) > 2:
            level.release(rng.choice(level.live[:-1]))
    assert sum(level.bad) == 10
    assert level.wear_ratio() <= 1.1


def test_least_worn_free_group_is_taken_first() -> None:
    """Among free groups the least worn goes first."""
    level = WearLeveller([5, 1, 3], [0, 0, 0], [False] * 3)
    assert level.take()[0] == 1


def test_oldest_live_group_is_reclaimed_when_none_is_free() -> None:
    """With every group live, the one of the lowest epoch is reclaimed."""
    level = WearLeveller([1, 1, 1], [7, 5, 9], [False] * 3)
    assert level.take() == (1, 10)


def test_bad_groups_are_never_handed_out() -> None:
    """A group marked bad is skipped for ever."""
    level = WearLeveller([0, 0, 0], [0, 0, 0], [False, True, False])
    taken = {level.take()[0] for _ in range(10)}
    assert 1 not in taken


def test_a_ring_needs_two_healthy_groups() -> None:
    """With one healthy group the newest data would be reclaimed: NoHealthyGroup instead."""
    level = WearLeveller([0, 0], [0, 0], [False, True])
    level.take()
    with pytest.raises(NoHealthyGroup):
        level.take()
