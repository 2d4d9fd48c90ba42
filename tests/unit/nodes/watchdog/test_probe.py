"""The known-answer probe: intersection over union and output comparison."""

from __future__ import annotations

import itertools

import pytest

from vigil.nodes.watchdog._probe import ProbeVerdict, compare_outputs, iou, next_probe_ts_us
from vigil.schemas import Box, PerceptionOutput


def _box(x0: float, y0: float, x1: float, y1: float, *, score: float = 0.9, cls: int = 0) -> Box:
    return Box(x_min=x0, y_min=y0, x_max=x1, y_max=y1, score=score, class_id=cls)


def _output(*boxes: Box) -> PerceptionOutput:
    return PerceptionOutput(confidence=0.9, timestamp_us=1, boxes=list(boxes))


def _compare(expected: PerceptionOutput, actual: PerceptionOutput) -> ProbeVerdict:
    return compare_outputs(expected, actual, min_iou=0.5, score_tol=0.05)


A = _box(0, 0, 10, 10)
B = _box(100, 100, 120, 130)


def test_iou_of_a_box_with_itself_is_one() -> None:
    """Identical boxes overlap completely."""
    assert iou(A, A) == 1.0


def test_iou_of_disjoint_boxes_is_zero() -> None:
    """Boxes that do not meet have IoU 0."""
    assert iou(A, B) == 0.0


def test_iou_of_touching_boxes_is_zero() -> None:
    """Boxes that share only an edge have IoU 0."""
    assert iou(A, _box(10, 0, 20, 10)) == 0.0


def test_iou_of_half_overlapping_boxes() -> None:
    """Two 10x10 boxes overlapping by half have IoU 50 / 150."""
    assert iou(A, _box(5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_iou_of_a_contained_box() -> None:
    """A box inside another has IoU = its area over the outer area."""
    assert iou(A, _box(0, 0, 5, 5)) == pytest.approx(25 / 100)


def test_iou_is_symmetric() -> None:
    """iou(a, b) == iou(b, a)."""
    other = _box(3, 4, 17, 9)
    assert iou(A, other) == iou(other, A)


def test_iou_of_a_degenerate_box_is_zero() -> None:
    """A zero-area box overlaps nothing."""
    assert iou(_box(5, 5, 5, 5), _box(5, 5, 5, 5)) == 0.0


def test_matching_outputs_pass() -> None:
    """The same boxes, in any order and slightly moved, match the known answer."""
    verdict = _compare(
        _output(A, B), _output(_box(101, 100, 120, 130, score=0.92), _box(0, 0, 10, 11))
    )
    assert verdict == ProbeVerdict(True, "2 boxes match the known answer")


def test_empty_outputs_match() -> None:
    """No boxes expected and none found is a match."""
    assert _compare(_output(), _output()).passed


@pytest.mark.parametrize(("expected", "actual"), [((A,), ()), ((A,), (A, B)), ((), (A,))])
def test_box_count_must_match(expected: tuple[Box, ...], actual: tuple[Box, ...]) -> None:
    """A missing or extra box fails with both counts."""
    verdict = _compare(_output(*expected), _output(*actual))
    assert verdict == ProbeVerdict(False, f"expected {len(expected)} boxes, got {len(actual)}")


def test_moved_box_fails() -> None:
    """A box found below min_iou of its known position fails."""
    verdict = _compare(_output(A), _output(_box(6, 0, 16, 10)))
    assert verdict == ProbeVerdict(False, "a box of the known answer was not found again")


def test_score_drift_fails() -> None:
    """A box whose score differs by more than score_tol fails."""
    verdict = _compare(_output(A), _output(_box(0, 0, 10, 10, score=0.8)))
    assert verdict == ProbeVerdict(False, "a box's class or score drifted from the known answer")


def test_score_within_tolerance_passes() -> None:
    """A score difference within score_tol passes."""
    assert _compare(_output(A), _output(_box(0, 0, 10, 10, score=0.86))).passed


def test_class_change_fails() -> None:
    """A box of another class fails even in the right place."""
    verdict = _compare(_output(A), _output(_box(0, 0, 10, 10, cls=3)))
    assert not verdict.passed
    assert "class" in verdict.detail


def test_each_found_box_matches_one_expected_box() -> None:
    """Two expected boxes cannot both be matched by one found box."""
    verdict = _compare(_output(A, B), _output(A, A))
    assert not verdict.passed


def test_probe_timestamps_strictly_increase() -> None:
    """Each probe timestamp is larger than the previous one, even within a microsecond."""
    stamps = [next_probe_ts_us() for _ in range(1000)]
    assert all(b > a for a, b in itertools.pairwise(stamps))
