"""Post-processing: text boxes from a probability map, and classification by softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vigil.nodes.worker._postprocess import classification, text_detection
from vigil.schemas.infer import MAX_BOXES, MAX_X, MAX_Y


def _map(height: int, width: int) -> np.ndarray:
    return np.zeros((height, width), dtype=np.float32)


def test_two_blobs_give_two_boxes() -> None:
    """Two separate high-probability regions give two boxes around them."""
    prob = _map(64, 96)
    prob[10:20, 10:40] = 0.9
    prob[40:50, 60:90] = 0.8
    out = text_detection(prob, 64, 96, 123)
    assert len(out.boxes) == 2
    first, second = out.boxes
    assert (first.score, second.score) == (pytest.approx(0.9), pytest.approx(0.8))
    assert first.x_min < 10 and first.x_max > 40 and first.y_min < 10 and first.y_max > 20
    assert second.x_min < 60 and second.x_max > 90 and second.y_min < 40 and second.y_max > 50
    assert out.timestamp_us == 123


def test_boxes_are_grown_by_the_unclip_offset() -> None:
    """A region is grown by area * unclip_ratio / perimeter on every side."""
    prob = _map(100, 100)
    prob[40:50, 20:60] = 1.0  # 10 x 40
    (box,) = text_detection(prob, 100, 100, 1, unclip_ratio=2.0).boxes
    grow = 10 * 40 * 2.0 / (2 * (10 + 40))
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == pytest.approx(
        (20 - grow, 40 - grow, 60 + grow, 50 + grow)
    )


def test_box_coordinates_stay_in_the_image() -> None:
    """A region at the image edge is clipped to [0, width] x [0, height]."""
    prob = _map(32, 48)
    prob[0:10, 0:20] = 0.95
    prob[25:32, 40:48] = 0.95
    out = text_detection(prob, 32, 48, 1)
    assert len(out.boxes) == 2
    for box in out.boxes:
        assert 0.0 <= box.x_min <= box.x_max <= 48.0
        assert 0.0 <= box.y_min <= box.y_max <= 32.0
    assert {(b.x_min, b.y_min) for b in out.boxes} >= {(0.0, 0.0)}
    assert {(b.x_max, b.y_max) for b in out.boxes} >= {(48.0, 32.0)}


def test_padding_beyond_the_image_is_ignored() -> None:
    """Only the top-left height x width of a padded map is searched."""
    prob = _map(64, 64)
    prob[40:60, 40:60] = 0.9  # lies in the padding of a 32 x 32 image
    assert text_detection(prob, 32, 32, 1).boxes == []


def test_boxes_never_exceed_the_image_plane() -> None:
    """Coordinates of a larger-than-plane image are clipped to the 1920 x 1080 plane."""
    prob = _map(1100, 2000)
    prob[1060:1100, 1900:2000] = 0.9
    (box,) = text_detection(prob, 1100, 2000, 1).boxes
    assert box.x_max <= MAX_X
    assert box.y_max <= MAX_Y


def test_low_score_regions_are_dropped() -> None:
    """A region above the pixel threshold but with a mean under box_threshold is dropped."""
    prob = _map(64, 64)
    prob[10:20, 10:40] = 0.4
    prob[40:50, 10:40] = 0.6
    out = text_detection(prob, 64, 64, 1, threshold=0.3, box_threshold=0.5)
    assert [b.score for b in out.boxes] == [pytest.approx(0.6)]


def test_small_regions_are_dropped() -> None:
    """A region thinner than min_side pixels is dropped."""
    prob = _map(64, 64)
    prob[10:12, 10:40] = 0.9
    prob[30:33, 10:40] = 0.9
    out = text_detection(prob, 64, 64, 1, min_side=3)
    assert len(out.boxes) == 1
    assert out.boxes[0].y_min < 30 < out.boxes[0].y_max


def test_empty_map_gives_no_boxes_and_zero_confidence() -> None:
    """A map with nothing above the threshold gives no boxes and confidence 0."""
    out = text_detection(_map(32, 32) + 0.1, 32, 32, 9)
    assert (out.boxes, out.confidence, out.timestamp_us) == ([], 0.0, 9)


def test_boxes_sorted_by_score_and_confidence_is_the_best() -> None:
    """Boxes come best first; the confidence is the best box's score."""
    prob = _map(64, 96)
    prob[5:15, 5:15] = 0.6
    prob[30:40, 30:40] = 0.95
    prob[50:60, 70:80] = 0.8
    out = text_detection(prob, 64, 96, 1)
    assert [b.score for b in out.boxes] == pytest.approx([0.95, 0.8, 0.6])
    assert out.confidence == pytest.approx(0.95)
    assert all(b.label == "text" and b.class_id == 0 for b in out.boxes)


def test_box_count_is_capped() -> None:
    """At most MAX_BOXES boxes are reported, the best ones."""
    prob = _map(4 * 20, 4 * 20)
    for i in range(20):
        for j in range(20):
            prob[4 * i : 4 * i + 3, 4 * j : 4 * j + 3] = 0.6 + 0.001 * (i * 20 + j) / 4
    out = text_detection(prob, 80, 80, 1)
    assert len(out.boxes) == MAX_BOXES
    assert min(b.score for b in out.boxes) >= 0.6 + 0.001 * (400 - MAX_BOXES) / 4 - 1e-6


def test_classification_is_a_softmax() -> None:
    """The top class is the arg max and its score its softmax probability."""
    logits = np.array([1.0, 3.0, 2.0], dtype=np.float32)
    out = classification(logits, 224, 224, 5)
    expected = math.exp(3) / (math.exp(1) + math.exp(3) + math.exp(2))
    (box,) = out.boxes
    assert box.class_id == 1
    assert box.score == pytest.approx(expected)
    assert out.confidence == pytest.approx(expected)
    assert out.timestamp_us == 5


def test_classification_is_stable_for_large_logits() -> None:
    """Huge logits neither overflow nor lose the answer."""
    out = classification(np.array([1000.0, 1001.0], dtype=np.float32), 10, 10, 1)
    assert out.boxes[0].class_id == 1
    assert out.confidence == pytest.approx(1 / (1 + math.exp(-1)))


def test_classification_box_covers_the_image() -> None:
    """The class box is the whole image, clipped to the image plane."""
    (box,) = classification(np.zeros((1, 4), np.float32), 2000, 3000, 1).boxes
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == (0.0, 0.0, MAX_X, MAX_Y)
    (small,) = classification(np.zeros(4, np.float32), 20, 30, 1).boxes
    assert (small.x_max, small.y_max) == (30.0, 20.0)


def test_uniform_logits_give_uniform_confidence() -> None:
    """Equal logits give 1 / classes confidence for the first class."""
    out = classification(np.zeros(4, dtype=np.float32), 8, 8, 1)
    assert (out.boxes[0].class_id, out.confidence) == (0, pytest.approx(0.25))


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_logits_are_refused(bad: float) -> None:
    """Logits that are not finite raise ValueError instead of a confident answer."""
    with pytest.raises(ValueError):
        classification(np.array([0.0, bad, 1.0], dtype=np.float32), 8, 8, 1)


def test_non_finite_probabilities_are_refused() -> None:
    """A probability map holding infinities raises ValueError instead of a sure box."""
    prob = _map(32, 32)
    prob[5:15, 5:15] = np.inf
    with pytest.raises(ValueError):
        text_detection(prob, 32, 32, 1)
