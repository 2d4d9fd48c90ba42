"""The demo sink node: consumes perception results from the bus, as a planner would."""

from __future__ import annotations

import json
import os

from vigil.nodes._runtime import Node
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.demo_sink._contract import KIND, SinkConfig
from vigil.schemas import InferResult, Topic

__all__ = ["run"]


def run(config: SinkConfig, args: NodeArgs) -> ExitCode:
    """Count results per stream (and any lost on the bus) until SIGTERM/SIGINT."""
    with Node(args) as node:
        sub = node.subscriber([Topic.INFER_RESULT])
        node.ready(KIND.contract(config))
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
