"""Liveness and the safety state: heartbeats and state-machine transitions."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["Heartbeat", "SafetyState", "StateChange"]


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
