"""The switch across the worker pool: prepare everywhere, commit only when all are ready."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from vigil.bus.deadline import Deadline
from vigil.schemas import ModelAnnouncement

__all__ = ["Switch", "SwitchOutcome"]


# implements: SR-MDL-002
class SwitchOutcome(enum.Enum):
    """How a switch ends."""

    PENDING = "pending"
    COMMIT = "commit"
    ABORT = "abort"


@dataclass
class Switch:
    """One generation's two-phase switch: every expected worker must report ready in time.

    A worker that refuses, or one that does not answer before the deadline, aborts the switch:
    every worker keeps (or returns to) the serving version.
    """

    generation: int
    model: ModelAnnouncement
    expected: set[str]
    deadline: Deadline
    started_ns: int
    ready: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)

    def on_ready(self, worker: str) -> None:
        """A worker prepared this generation."""
        self.ready.add(worker)

    def on_refused(self, worker: str, reason: str) -> None:
        """A worker could not prepare this generation."""
        self.refused[worker] = reason

    def on_worker_gone(self, worker: str) -> None:
        """A worker stopped beating: a restarted one loads the committed version itself."""
        self.expected.discard(worker)

    def outcome(self, now_ns: int) -> SwitchOutcome:
        """Commit when every expected worker is ready; abort on a refusal or at the deadline."""
        if self.refused:
            return SwitchOutcome.ABORT
        if self.expected <= self.ready:
            return SwitchOutcome.COMMIT
        if self.deadline.expired(now_ns):
            return SwitchOutcome.ABORT
        return SwitchOutcome.PENDING

    def why_aborted(self) -> str:
        """A one-line reason for the rollback."""
        if self.refused:
            return "; ".join(f"{w}: {r}" for w, r in sorted(self.refused.items()))
        missing = sorted(self.expected - self.ready)
        return f"not ready in time: {', '.join(missing)}"
