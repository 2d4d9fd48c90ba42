"""The regression comparison: outputs paired by key, numbers within tolerance, boxes by IoU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vigil.errors import ConfigError
from vigil.schemas import Box, InferResult, PerceptionOutput, Topic
from vigil.tools.bag import (
    DEFAULT_TOLERANCES,
    BoxTolerance,
    FieldTolerance,
    Tolerances,
    TopicTolerance,
    compare,
    format_report,
    load_tolerances,
)
from vigil.tools.bag.check import LOAD_DEPENDENT, _Output, _set_aside
from vigil.tools.bag.compare import iou


@dataclass
class Seen:
    topic: str
    body: Any


def _box(x: float, y: float, *, score: float = 0.9, label: str = "car") -> Box:
    return Box(x_min=x, y_min=y, x_max=x + 10, y_max=y + 10, score=score, label=label)


def _result(frame: int, boxes: list[Box], *, confidence: float = 0.9, **kw: Any) -> Seen:
    body = InferResult(
        stream_id="cam0",
        frame_ts_us=frame,
        output=PerceptionOutput(confidence=confidence, timestamp_us=frame, boxes=boxes),
        model="det",
        version="1",
        **kw,
    )
    return Seen(Topic.INFER_RESULT, body)


def test_identical_outputs_pass() -> None:
    """The same results on both sides pass with nothing named."""
    runs = [_result(i, [_box(i, i)]) for i in range(1, 4)]
    report = compare(runs, list(runs))
    assert report.passed
    assert report.topics[Topic.INFER_RESULT].matched == 3
    assert report.differences == []


def test_timing_fields_are_ignored_by_default() -> None:
    """Worker, batch and latency fields differ run to run and are not compared."""
    report = compare([_result(1, [], infer_us=10, worker="w0")], [_result(1, [], infer_us=99)])
    assert report.passed


def test_number_outside_tolerance_is_named() -> None:
    """A confidence beyond its tolerance is reported with its path and both values."""
    report = compare([_result(1, [], confidence=0.5)], [_result(1, [], confidence=0.6)])
    assert not report.passed
    (diff,) = report.differences
    assert diff.path == "$.output.confidence"
    assert diff.key == "stream_id=cam0 frame_ts_us=1"
    assert (diff.recorded, diff.replayed) == ("0.5", "0.6")


def test_number_inside_tolerance_passes() -> None:
    """A difference within the configured abs tolerance passes."""
    report = compare([_result(1, [], confidence=0.5)], [_result(1, [], confidence=0.5005)])
    assert report.passed


def test_relative_tolerance_scales_with_the_value() -> None:
    """rel allows a difference proportional to the larger magnitude."""
    rules = Tolerances(
        topics={Topic.INFER_RESULT: TopicTolerance(key=["frame_ts_us"], ignore=["output"])},
        default=FieldTolerance(rel=0.01),
    )
    a = _result(1, [], queue_us=1000)
    assert compare([a], [_result(1, [], queue_us=1009)], rules).passed
    assert not compare([a], [_result(1, [], queue_us=1011)], rules).passed


def test_boxes_in_another_order_match_by_iou() -> None:
    """Reordered boxes are matched by IoU and pass."""
    boxes = [_box(0, 0), _box(100, 100), _box(300, 50)]
    report = compare([_result(1, boxes)], [_result(1, boxes[::-1])])
    assert report.passed


def test_a_missing_box_is_named() -> None:
    """A recorded box with no replayed match is reported as missing."""
    report = compare([_result(1, [_box(0, 0), _box(100, 100)])], [_result(1, [_box(0, 0)])])
    assert not report.passed
    (diff,) = report.differences
    assert diff.path == "$.output.boxes[1]"
    assert diff.replayed == "<none>"


def test_an_extra_box_is_named() -> None:
    """A replayed box with no recorded match is reported as extra."""
    report = compare([_result(1, [])], [_result(1, [_box(5, 5)])])
    (diff,) = report.differences
    assert diff.path == "$.output.boxes[~0]"
    assert diff.recorded == "<none>"


def test_matched_boxes_compare_their_fields() -> None:
    """A matched box whose label changed is a difference on that field."""
    report = compare(
        [_result(1, [_box(0, 0, label="car")])], [_result(1, [_box(0, 0, label="bus")])]
    )
    (diff,) = report.differences
    assert diff.path == "$.output.boxes[0~0].label"


def test_hungarian_finds_the_assignment_greedy_misses() -> None:
    """Where the best single pair blocks a full match, Hungarian matches both boxes."""
    # IoU: A-C 0.90, A-D 0.60, B-C 0.60, B-D 0.29. Greedy takes A-C and strands B and D.
    recorded = [
        Box(x_min=10, y_min=0, x_max=20, y_max=10, score=0.9),
        Box(x_min=13, y_min=0, x_max=23, y_max=10, score=0.9),
    ]
    replayed = [
        Box(x_min=10.5, y_min=0, x_max=20.5, y_max=10, score=0.9),
        Box(x_min=7.5, y_min=0, x_max=17.5, y_max=10, score=0.9),
    ]
    tolerance = TopicTolerance(
        key=["frame_ts_us"],
        fields={"output.boxes." + k: FieldTolerance(abs=10) for k in ("x_min", "x_max")},
        boxes={"output.boxes": BoxTolerance(iou=0.4, match="hungarian")},
    )
    greedy = TopicTolerance(
        key=tolerance.key,
        fields=tolerance.fields,
        boxes={"output.boxes": BoxTolerance(iou=0.4, match="greedy")},
    )
    a, b = [_result(1, recorded)], [_result(1, replayed)]
    assert compare(a, b, Tolerances(topics={Topic.INFER_RESULT: tolerance})).passed
    assert not compare(a, b, Tolerances(topics={Topic.INFER_RESULT: greedy})).passed


def test_missing_and_extra_outputs_are_listed_by_key() -> None:
    """An output on one side only is named as missing or extra."""
    report = compare([_result(1, []), _result(2, [])], [_result(2, []), _result(3, [])])
    topic = report.topics[Topic.INFER_RESULT]
    assert topic.missing == ["stream_id=cam0 frame_ts_us=1"]
    assert topic.extra == ["stream_id=cam0 frame_ts_us=3"]
    assert not report.passed


def test_allow_missing_tolerates_one_sided_outputs() -> None:
    """allow_missing passes when paired outputs agree even if some are unpaired."""
    rules = Tolerances(
        topics={Topic.INFER_RESULT: TopicTolerance(key=["frame_ts_us"], allow_missing=True)}
    )
    assert compare([_result(1, []), _result(2, [])], [_result(2, [])], rules).passed


def test_topics_without_a_rule_are_not_compared() -> None:
    """Only the topics the tolerances name are compared."""
    report = compare([Seen("health/heartbeat", {"pid": 1})], [], DEFAULT_TOLERANCES)
    assert report.passed
    assert "health/heartbeat" not in report.topics


def test_unkeyed_topic_pairs_in_arrival_order() -> None:
    """Without a key, the n-th output of each side is compared."""
    rules = Tolerances(topics={"x": TopicTolerance()})
    report = compare(
        [Seen("x", {"v": 1}), Seen("x", {"v": 2})],
        [Seen("x", {"v": 1}), Seen("x", {"v": 3})],
        rules,
    )
    (diff,) = report.differences
    assert (diff.key, diff.path) == ("#1", "$.v")


def test_iou_of_identical_and_disjoint_boxes() -> None:
    """IoU is 1 for a box with itself and 0 for boxes that do not touch."""
    a = {"x_min": 0, "y_min": 0, "x_max": 2, "y_max": 2}
    b = {"x_min": 5, "y_min": 5, "x_max": 6, "y_max": 6}
    assert iou(a, a) == 1.0
    assert iou(a, b) == 0.0


def test_report_markdown_names_the_differing_output() -> None:
    """The Markdown report says FAIL and lists the differing field."""
    report = compare([_result(1, [], confidence=0.1)], [_result(1, [], confidence=0.9)])
    text = format_report(report)
    assert text.startswith("**FAIL**")
    assert "$.output.confidence" in text


def test_tolerances_load_from_yaml(tmp_path: Path) -> None:
    """A YAML tolerance file decodes into typed tolerances."""
    path = tmp_path / "tol.yaml"
    path.write_text(
        "topics:\n"
        "  infer/result:\n"
        "    key: [stream_id, frame_ts_us]\n"
        "    fields: {output.confidence: {abs: 0.05}}\n"
        "    boxes: {output.boxes: {iou: 0.7, match: greedy}}\n"
    )
    rules = load_tolerances(path)
    rule = rules.topics[Topic.INFER_RESULT]
    assert rule.fields["output.confidence"].abs == 0.05
    assert rule.boxes["output.boxes"] == BoxTolerance(iou=0.7, match="greedy")
    assert rules.inputs == [Topic.INFER_REQUEST]


def test_unknown_tolerance_key_names_the_file_and_path(tmp_path: Path) -> None:
    """A misspelt key is a ConfigError naming the file and the `$.path`."""
    path = tmp_path / "bad.yaml"
    path.write_text("topics:\n  infer/result:\n    fields: {a: {absolute: 1}}\n")
    with pytest.raises(ConfigError) as err:
        load_tolerances(path)
    assert err.value.source == str(path)
    assert err.value.path.startswith("$.topics")
    assert "absolute" in err.value.reason


def _error(code: str, ts: int) -> _Output:
    return _Output(Topic.INFER_ERROR, {"code": code, "stream_id": "s", "frame_ts_us": ts})


def _served(ts: int) -> _Output:
    return _Output(Topic.INFER_RESULT, {"stream_id": "s", "frame_ts_us": ts, "model": "m"})


def test_load_dependent_outcomes_on_either_side_are_set_aside_and_counted() -> None:
    """A shed or late output on either side leaves the comparison and is counted by code;
    a model-attributable error stays in it."""
    recorded = [_served(1), _error("DEADLINE_EXCEEDED", 2), _error("INVALID_ARGUMENT", 3)]
    replayed = [_error("UNAVAILABLE", 1), _served(2), _error("INVALID_ARGUMENT", 3)]
    kept_recorded, kept_replayed, aside = _set_aside(recorded, replayed)  # type: ignore[arg-type]
    assert kept_recorded == [recorded[2]] and kept_replayed == [replayed[2]]
    assert aside.recorded == {"DEADLINE_EXCEEDED": 1}
    assert aside.replayed == {"UNAVAILABLE": 1}
    assert aside.outputs == ["s 1", "s 2"]
    assert compare(kept_recorded, kept_replayed).passed


def test_without_setting_aside_a_load_dependent_outcome_is_a_regression() -> None:
    """Compared like any output (--include-load-dependent), a shed request fails the check."""
    assert not compare([_served(1)], [_error("UNAVAILABLE", 1)]).passed
    assert {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"} == LOAD_DEPENDENT
