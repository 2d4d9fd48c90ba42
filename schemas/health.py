"""Liveness and the safety state: heartbeats and state-machine transitions."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["Heartbeat", "NodeExit", "SafetyState", "StateChange"]


class SafetyState(enum.StrEnum):
    """The watchdog's safety states (DESIGN.md, Nodes)."""

    NORMAL = "NORMAL"
    DEGRADED = "DEGRADED"
    RECOVERING = "RECOVERING"
    SAFE_STOP = "SAFE_STOP"


class Heartbeat(Message, kw_only=True, frozen=True, tag="health.heartbeat"):
    """A node's periodic sign of life."""

    node: Annotated[str, msgspec.Meta(max_length=64)]
    instance: Annotated[int, msgspec.Meta(ge=0)]
    pid: Annotated[int, msgspec.Meta(ge=0)]
    period_ms: Annotated[int, msgspec.Meta(gt=0)]
    kind: Annotated[str, msgspec.Meta(max_length=32)] = ""
    detail: dict[str, str] = {}


class StateChange(Message, kw_only=True, frozen=True, tag="health.state"):
    """The watchdog's current state and the transition that led to it."""

    state: SafetyState
    previous: SafetyState
    cause: Annotated[str, msgspec.Meta(max_length=256)]
    since_ns: int
    transitions: Annotated[int, msgspec.Meta(ge=0)] = 0
    # The share of the request path's capacity that is alive (1.0: the fault, if any, is off
    # the request path). The ingest sheds by it, so a fault costs no more than its share.
    capacity: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    # Transitions in the last minute: flapping is visible, and it slows recovery down.
    transitions_per_min: Annotated[int, msgspec.Meta(ge=0)] = 0


class NodeExit(Message, kw_only=True, frozen=True, tag="health.exit"):
    """The launcher saw a node process end (at once, not a heartbeat later)."""

    node: Annotated[str, msgspec.Meta(max_length=64)]
    kind: Annotated[str, msgspec.Meta(max_length=32)] = ""
    pid: Annotated[int, msgspec.Meta(ge=0)]
    # The exit status; negative: killed by that signal (as `subprocess` reports it).
    code: int
    # Why it ended, when the launcher ended it (a hang), else "".
    reason: Annotated[str, msgspec.Meta(max_length=256)] = ""
    # When the launcher restarts it; -1: it is not restarted.
    restart_in_ms: int = -1
