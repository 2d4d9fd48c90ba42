"""The known-answer health probe: a fixed frame through the real pipeline, checked on return."""

from __future__ import annotations

import time
from dataclasses import dataclass

from vigil.schemas import Box, PerceptionOutput

__all__ = ["ProbeVerdict", "compare_outputs", "iou", "next_probe_ts_us"]


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """Whether a probe's output matched the expectation, and why not."""

    passed: bool
    detail: str


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    w = min(a.x_max, b.x_max) - max(a.x_min, b.x_min)
    h = min(a.y_max, b.y_max) - max(a.y_min, b.y_min)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area = (a.x_max - a.x_min) * (a.y_max - a.y_min) + (b.x_max - b.x_min) * (b.y_max - b.y_min)
    return inter / (area - inter)


def compare_outputs(
    expected: PerceptionOutput, actual: PerceptionOutput, *, min_iou: float, score_tol: float
) -> ProbeVerdict:
    """Every expected box found again (greedy IoU match) with a close score, and no extra."""
    if len(expected.boxes) != len(actual.boxes):
        return ProbeVerdict(False, f"expected {len(expected.boxes)} boxes, got {len(actual.boxes)}")
    unmatched = list(actual.boxes)
    for want in expected.boxes:
        best = max(unmatched, key=lambda got: iou(want, got), default=None)
        if best is None or iou(want, best) < min_iou:
            return ProbeVerdict(False, "a box of the known answer was not found again")
        if abs(best.score - want.score) > score_tol or best.class_id != want.class_id:
            return ProbeVerdict(False, "a box's class or score drifted from the known answer")
        unmatched.remove(best)
    return ProbeVerdict(True, f"{len(expected.boxes)} boxes match the known answer")


_last_ts = 0


def next_probe_ts_us() -> int:
    """A strictly increasing frame timestamp for the probe stream (the ingest enforces it)."""
    global _last_ts  # noqa: PLW0603 - one probe stream per process
    _last_ts = max(_last_ts + 1, time.time_ns() // 1000)
    return _last_ts
