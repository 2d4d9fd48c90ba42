"""The demo sink node: consumes perception results from the bus, as a planner would."""

from __future__ import annotations

import json
import os

from vigil.nodes._runtime import ExitCode, Node, NodeArgs
from vigil.schemas import InferResult, Topic
from vigil.schemas._base import Config as NodeConfig

__all__ = ["Config", "SinkConfig", "run"]


class SinkConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the sink writes what it saw."""

    report: str = "sink-report.json"


Config = SinkConfig


def run(config: SinkConfig, args: NodeArgs) -> ExitCode:
    """Count results per stream (and any lost on the bus) until SIGTERM/SIGINT."""
    with Node(args) as node:
        sub = node.subscriber([Topic.INFER_RESULT])
        node.ready(publishes=[], subscribes=[Topic.INFER_RESULT])
        per_stream: dict[str, int] = {}
        boxes = 0
        while not node.stopping:
            if not node.poll().get(sub.socket):
                continue
            while (received := sub.recv(0)) is not None:
                if isinstance(received.body, InferResult):
                    result = received.body
                    per_stream[result.stream_id] = per_stream.get(result.stream_id, 0) + 1
                    boxes += len(result.output.boxes)
        report = {"results": per_stream, "boxes": boxes, "lost_on_bus": sub.lost}
        path = node.resolve(config.report)
        path.with_suffix(".tmp").write_text(json.dumps(report, indent=2))
        os.replace(path.with_suffix(".tmp"), path)
    return ExitCode.OK
