"""The regression comparison: recorded outputs against replayed ones, within stated tolerances.

Outputs are paired per topic by a key (for `infer/result`, the stream and frame timestamp),
or by arrival order when a topic has no key. Paired bodies are compared field by field:
numbers within `abs`/`rel` tolerances, everything else exactly. Lists of boxes are matched by
IoU first (Hungarian assignment, or greedy), so a detector that returns the same boxes in
another order passes, and a missing or extra box is named.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol

import msgspec
import numpy as np
import yaml

from vigil.errors import ConfigError
from vigil.schemas import Topic
from vigil.tools.bag._mcap import BagMessage, read_messages

__all__ = [
    "DEFAULT_TOLERANCES",
    "BoxTolerance",
    "CheckReport",
    "Difference",
    "FieldTolerance",
    "Observed",
    "Tolerances",
    "TopicReport",
    "TopicTolerance",
    "compare",
    "format_report",
    "iou",
    "load_tolerances",
    "read_bag_io",
]


class Observed(Protocol):
    """A message as the comparison needs it: `Received` from a Subscriber or a `BagMessage`."""

    @property
    def topic(self) -> str: ...

    @property
    def body(self) -> Any: ...


class FieldTolerance(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Numbers pass when |a - b| <= max(abs, rel * max(|a|, |b|))."""

    abs: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    rel: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class BoxTolerance(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a list of boxes is matched before its boxes are compared."""

    iou: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    match: Literal["hungarian", "greedy"] = "hungarian"


class TopicTolerance(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one output topic is compared.

    Field paths are dotted, without list indices (`output.boxes.score`).
    """

    key: list[str] = []
    ignore: list[str] = []
    fields: dict[str, FieldTolerance] = {}
    boxes: dict[str, BoxTolerance] = {}
    # Pass even when one side has outputs the other lacks (a topic sampled, not complete).
    allow_missing: bool = False


class Tolerances(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A regression check's configuration: which topics are inputs, which outputs, and how
    closely outputs must agree. Only the topics named under `topics` are compared."""

    inputs: list[str] = msgspec.field(default_factory=lambda: [Topic.INFER_REQUEST])
    default: FieldTolerance = FieldTolerance()
    topics: dict[str, TopicTolerance] = {}


_BOX_FIELDS: Final = ("x_min", "y_min", "x_max", "y_max")

DEFAULT_TOLERANCES: Final = Tolerances(
    topics={
        Topic.INFER_RESULT: TopicTolerance(
            key=["stream_id", "frame_ts_us"],
            # Timing and placement differ run to run and say nothing about the output.
            ignore=[
                "worker",
                "batch_id",
                "batch_size",
                "queue_us",
                "infer_us",
                "socket_us",
                "threads",
            ],
            fields={
                "output.confidence": FieldTolerance(abs=1e-3),
                "output.boxes.score": FieldTolerance(abs=1e-3),
                "output.boxes.x_min": FieldTolerance(abs=0.5),
                "output.boxes.y_min": FieldTolerance(abs=0.5),
                "output.boxes.x_max": FieldTolerance(abs=0.5),
                "output.boxes.y_max": FieldTolerance(abs=0.5),
            },
            boxes={"output.boxes": BoxTolerance()},
        ),
        Topic.INFER_ERROR: TopicTolerance(
            key=["stream_id", "frame_ts_us"], ignore=["message", "retry_after_ms"]
        ),
    }
)


def load_tolerances(path: str | Path) -> Tolerances:
    """Decode a tolerance YAML file; ConfigError names the file and the `$.path`."""
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(source, "", str(exc)) from exc
    try:
        return msgspec.convert(raw or {}, Tolerances)
    except msgspec.ValidationError as exc:
        rule, _, at = str(exc).partition(" - at `")
        raise ConfigError(source, at.rstrip("`"), rule) from exc


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    """One output that differs: where, what each side had and why it fails."""

    topic: str
    key: str
    path: str
    recorded: str
    replayed: str
    reason: str


class TopicReport(msgspec.Struct, frozen=True, kw_only=True):
    """Counts for one compared topic."""

    recorded: int
    replayed: int
    matched: int
    differing: int
    missing: list[str]
    extra: list[str]


class CheckReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a regression check; `passed` is False when any output differs."""

    passed: bool
    topics: dict[str, TopicReport]
    differences: list[Difference]


def iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Intersection over union of two boxes given as `x_min`, `y_min`, `x_max`, `y_max`."""
    ix = min(a["x_max"], b["x_max"]) - max(a["x_min"], b["x_min"])
    iy = min(a["y_max"], b["y_max"]) - max(a["y_min"], b["y_min"])
    inter = max(0.0, ix) * max(0.0, iy)
    area_a = (a["x_max"] - a["x_min"]) * (a["y_max"] - a["y_min"])
    area_b = (b["x_max"] - b["x_min"]) * (b["y_max"] - b["y_min"])
    union = area_a + area_b - inter
    if union <= 0.0:
        # Two degenerate boxes match only where they coincide.
        return 1.0 if all(a[k] == b[k] for k in _BOX_FIELDS) else 0.0
    return float(inter / union)


def _match_boxes(
    recorded: Sequence[dict[str, Any]], replayed: Sequence[dict[str, Any]], rule: BoxTolerance
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """(matched index pairs, unmatched recorded, unmatched replayed)."""
    if not recorded or not replayed:
        return [], list(range(len(recorded))), list(range(len(replayed)))
    scores = np.array([[iou(a, b) for b in replayed] for a in recorded], dtype=np.float64)
    pairs: list[tuple[int, int]] = []
    if rule.match == "hungarian":
        # scipy.optimize takes seconds to import: only a comparison that matches boxes pays.
        from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

        # Pairs below the threshold count as nothing, so the assignment maximises the
        # overlap of pairs that can match instead of trading them for a near miss.
        rows, cols = linear_sum_assignment(np.where(scores >= rule.iou, scores, 0.0), maximize=True)
        pairs = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
    else:
        used_r: set[int] = set()
        used_c: set[int] = set()
        order = np.dstack(np.unravel_index(np.argsort(-scores, axis=None), scores.shape))[0]
        for r, c in order:
            if r not in used_r and c not in used_c:
                used_r.add(int(r))
                used_c.add(int(c))
                pairs.append((int(r), int(c)))
    pairs = sorted((r, c) for r, c in pairs if scores[r, c] >= rule.iou)
    matched_r = {r for r, _ in pairs}
    matched_c = {c for _, c in pairs}
    return (
        pairs,
        [i for i in range(len(recorded)) if i not in matched_r],
        [j for j in range(len(replayed)) if j not in matched_c],
    )


def _builtins(body: Any) -> Any:
    return body if isinstance(body, dict) else msgspec.to_builtins(body)


class _Comparer:
    def __init__(self, topic: str, key: str, rule: TopicTolerance, default: FieldTolerance):
        self.topic = topic
        self.key = key
        self.rule = rule
        self.default = default
        self.ignore = set(rule.ignore)
        self.found: list[Difference] = []

    def diff(self, path: str, where: str, a: Any, b: Any) -> None:
        """Compare `a` (recorded) with `b` (replayed) at dotted `path` (`where` has indices)."""
        if path in self.ignore:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                sub = f"{path}.{name}" if path else name
                sub_where = f"{where}.{name}"
                if sub in self.ignore:
                    continue
                if name not in a or name not in b:
                    self._add(
                        sub_where,
                        _text(a[name]) if name in a else "<absent>",
                        _text(b[name]) if name in b else "<absent>",
                        "absent on one side",
                    )
                else:
                    self.diff(sub, sub_where, a[name], b[name])
            return
        if isinstance(a, list) and isinstance(b, list):
            box_rule = self.rule.boxes.get(path)
            if box_rule is not None:
                self._boxes(path, where, a, b, box_rule)
                return
            if len(a) != len(b):
                self._add(where, f"{len(a)} items", f"{len(b)} items", "length differs")
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                self.diff(path, f"{where}[{i}]", x, y)
            return
        if _is_number(a) and _is_number(b):
            tol = self.rule.fields.get(path, self.default)
            delta = abs(float(a) - float(b))
            bound = max(tol.abs, tol.rel * max(abs(float(a)), abs(float(b))))
            if math.isnan(delta) or delta > bound:
                self._add(where, _text(a), _text(b), f"|diff| {delta:.6g} > {bound:.6g}")
            return
        if type(a) is not type(b) or a != b:
            self._add(where, _text(a), _text(b), "not equal")

    def _boxes(
        self,
        path: str,
        where: str,
        a: list[Any],
        b: list[Any],
        rule: BoxTolerance,
    ) -> None:
        pairs, missing, extra = _match_boxes(a, b, rule)
        for r, c in pairs:
            self.diff(path, f"{where}[{r}~{c}]", a[r], b[c])
        for r in missing:
            self._add(
                f"{where}[{r}]",
                _box_text(a[r]),
                "<none>",
                f"no replayed box with IoU >= {rule.iou:g}",
            )
        for c in extra:
            self._add(
                f"{where}[~{c}]",
                "<none>",
                _box_text(b[c]),
                f"no recorded box with IoU >= {rule.iou:g}",
            )

    def _add(self, where: str, recorded: str, replayed: str, reason: str) -> None:
        self.found.append(
            Difference(
                topic=self.topic,
                key=self.key,
                path=where,
                recorded=recorded,
                replayed=replayed,
                reason=reason,
            )
        )


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _text(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 120 else text[:117] + "..."


def _box_text(box: Any) -> str:
    if isinstance(box, dict):
        corners = ", ".join(f"{box.get(k, '?')}" for k in _BOX_FIELDS)
        return (
            f"({corners}) {box.get('label', '')}#{box.get('class_id', '')} {box.get('score', '')}"
        )
    return _text(box)


def _key_of(body: dict[str, Any], fields: list[str], index: int) -> str:
    if not fields:
        return f"#{index}"
    parts = []
    for name in fields:
        value: Any = body
        for step in name.split("."):
            value = value.get(step) if isinstance(value, dict) else None
        parts.append(f"{name}={value}")
    return " ".join(parts)


def _group(
    messages: Iterable[Observed], topics: dict[str, TopicTolerance]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per topic, per key: the bodies in arrival order (a key seen twice keeps both)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    seen: dict[str, int] = defaultdict(int)
    for message in messages:
        rule = topics.get(message.topic)
        if rule is None:
            continue
        body = _builtins(message.body)
        index = seen[message.topic]
        seen[message.topic] += 1
        grouped[message.topic][_key_of(body, rule.key, index)].append(body)
    return grouped


def compare(
    recorded: Iterable[Observed],
    replayed: Iterable[Observed],
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> CheckReport:
    """Compare outputs topic by topic; the report names every output that differs.

    Only topics named in `tolerances.topics` are compared. An output present on one side
    only is `missing` (recorded, not replayed) or `extra` (replayed, not recorded).
    """
    rules = tolerances.topics
    old = _group(recorded, rules)
    new = _group(replayed, rules)
    differences: list[Difference] = []
    reports: dict[str, TopicReport] = {}
    passed = True
    for topic, rule in rules.items():
        a, b = old.get(topic, {}), new.get(topic, {})
        missing, extra = [], []
        matched = differing = 0
        for key in list(a) + [k for k in b if k not in a]:
            left, right = a.get(key, []), b.get(key, [])
            for x, y in zip(left, right, strict=False):
                comparer = _Comparer(topic, key, rule, tolerances.default)
                comparer.diff("", "$", x, y)
                matched += 1
                if comparer.found:
                    differing += 1
                    differences.extend(comparer.found)
            missing += [key] * max(0, len(left) - len(right))
            extra += [key] * max(0, len(right) - len(left))
        if differing or (not rule.allow_missing and (missing or extra)):
            passed = False
        reports[topic] = TopicReport(
            recorded=sum(len(v) for v in a.values()),
            replayed=sum(len(v) for v in b.values()),
            matched=matched,
            differing=differing,
            missing=missing,
            extra=extra,
        )
    return CheckReport(passed=passed, topics=reports, differences=differences)


def read_bag_io(
    paths: Sequence[str | Path], tolerances: Tolerances = DEFAULT_TOLERANCES
) -> tuple[list[BagMessage], list[BagMessage]]:
    """(inputs, outputs) of a bag: messages on `tolerances.inputs` and on the compared topics.

    Inputs keep their recorded frames (`BagMessage.frames()`) so they can be sent again
    unchanged; outputs are what `compare` takes as the recorded side.
    """
    inputs_topics = set(tolerances.inputs)
    outputs_topics = set(tolerances.topics)
    inputs: list[BagMessage] = []
    outputs: list[BagMessage] = []
    for message in read_messages(paths, topics=inputs_topics | outputs_topics):
        if message.topic in inputs_topics:
            inputs.append(message)
        if message.topic in outputs_topics:
            outputs.append(message)
    return inputs, outputs


def format_report(report: CheckReport, *, limit: int = 50) -> str:
    """A Markdown summary of a check: a row per topic, then the first `limit` differences."""
    lines = [
        f"**{'PASS' if report.passed else 'FAIL'}**",
        "",
        "| topic | recorded | replayed | matched | differing | missing | extra |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for topic, t in report.topics.items():
        lines.append(
            f"| {topic} | {t.recorded} | {t.replayed} | {t.matched} | {t.differing} | "
            f"{len(t.missing)} | {len(t.extra)} |"
        )
    for topic, t in report.topics.items():
        lines += [f"- {topic}: missing output `{k}`" for k in t.missing[:limit]]
        lines += [f"- {topic}: extra output `{k}`" for k in t.extra[:limit]]
    if report.differences:
        lines += [
            "",
            "| topic | output | field | recorded | replayed | reason |",
            "|---|---|---|---|---|---|",
        ]
        for d in report.differences[:limit]:
            lines.append(
                f"| {d.topic} | {d.key} | `{d.path}` | {d.recorded} | {d.replayed} | {d.reason} |"
            )
        if len(report.differences) > limit:
            lines.append(f"\n... and {len(report.differences) - limit} more differences")
    return "\n".join(lines)
