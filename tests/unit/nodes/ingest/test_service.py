"""The service model: request cost from measured batches, and the floor of the possible."""

from __future__ import annotations

import pytest

from vigil.nodes.ingest._service import PACE_NS, ServiceModel

pytestmark = pytest.mark.verifies("SR-RL-002", "SR-DLN-003")


def test_nothing_is_priced_before_a_measurement() -> None:
    """Before any batch came back every request costs 1 ns and nothing is impossible."""
    model = ServiceModel()
    assert not model.measured
    assert model.cost_ns(1_000_000) == 1
    assert model.floor_ns == 0


def test_cost_is_per_request_of_a_batch_and_scales_within_a_size() -> None:
    """A batch of 4 frames of 100 pixels in 400 us prices such a request at 100 us, and one of
    120 pixels (the same power of two) at 120 us."""
    model = ServiceModel()
    model.observe(infer_us=400, batch_size=4, pixels=100)
    assert model.cost_ns(100) == 100_000
    assert model.cost_ns(120) == 120_000


def test_a_tiny_frame_costs_at_least_the_cheapest_request_seen() -> None:
    """The per-pixel price never makes a request cheaper than the cheapest measured one."""
    model = ServiceModel()
    model.observe(infer_us=1000, batch_size=1, pixels=10_000)
    model.observe(infer_us=2000, batch_size=1, pixels=20_000)
    assert model.cost_ns(1) == 1_000_000


def test_the_floor_is_the_fastest_recent_batch() -> None:
    """No budget below the fastest batch of the window can be met; old batches age out."""
    model = ServiceModel(window=2)
    model.observe(infer_us=50, batch_size=1, pixels=10)
    model.observe(infer_us=80, batch_size=1, pixels=10)
    assert model.floor_ns == 50_000
    model.observe(infer_us=90, batch_size=1, pixels=10)
    assert model.floor_ns == 80_000


def test_sizes_are_priced_apart() -> None:
    """A flood of tiny frames, cheap per request but dear per pixel, leaves the price of a
    large frame where its own batches put it."""
    model = ServiceModel()
    model.observe(infer_us=200_000, batch_size=1, pixels=640 * 384)
    for _ in range(100):
        model.observe(infer_us=5_000, batch_size=1, pixels=16 * 16)
    assert model.cost_ns(640 * 384) == 200_000_000
    assert model.cost_ns(16 * 16) == 5_000_000


def test_a_size_never_measured_is_priced_optimistically() -> None:
    """Between two measured sizes the price is interpolated; above every measured size it is
    the largest one's, so that a new size is served (and measured), not refused on a guess."""
    model = ServiceModel()
    model.observe(infer_us=10_000, batch_size=1, pixels=1_000)
    model.observe(infer_us=110_000, batch_size=1, pixels=101_000)
    assert model.cost_ns(51_000) == 60_000_000
    assert model.cost_ns(4_000_000) == 110_000_000


def test_the_price_follows_a_slower_machine() -> None:
    """When batches slow down the price per pixel moves towards the new speed."""
    model = ServiceModel(weight=0.5)
    model.observe(infer_us=100, batch_size=1, pixels=100)
    model.observe(infer_us=300, batch_size=1, pixels=100)
    assert model.cost_ns(100) == 200_000


def test_the_pace_comes_from_busy_completions_only() -> None:
    """While work waits, estimated work done per wall-clock ns is the pipeline's pace (here
    half the batch timings: overheads); a completion after an idle spell says nothing."""
    model = ServiceModel()
    assert model.speed(2, 0) == 2.0
    now = 0
    model.completed(100, now, pending=False)
    now += 10_000  # idle: not counted
    model.completed(100, now, pending=True)
    for _ in range(10):
        now += 200
        model.completed(100, now, pending=True)
    assert model.speed(2, now) == 0.5


def test_a_past_overload_does_not_make_an_idle_pipeline_look_slow() -> None:
    """Busy spells older than the pace window no longer count: the batch timings stand."""
    model = ServiceModel()
    now = 0
    model.completed(100, now, pending=True)
    for _ in range(10):
        now += 1000
        model.completed(100, now, pending=True)
    assert model.speed(2, now) == 0.1
    assert model.speed(2, now + PACE_NS) == 2.0
