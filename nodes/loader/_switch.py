"""The switch across the worker pool: prepare everywhere, then commit at once when every worker
holds both versions, or roll out one worker at a time when some cannot; any failure returns
every worker to the serving version."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from vigil.bus.deadline import Deadline
from vigil.schemas import ModelAnnouncement

__all__ = ["Rollout", "RolloutOutcome", "Switch", "SwitchOutcome"]


# implements: SR-MDL-002
class SwitchOutcome(enum.Enum):
    """How a switch ends."""

    PENDING = "pending"
    COMMIT = "commit"
    ROLL = "roll"  # some workers cannot hold two versions: roll out one at a time
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
    deferred: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)

    def on_ready(self, worker: str) -> None:
        """A worker prepared this generation."""
        self.ready.add(worker)

    def on_deferred(self, worker: str) -> None:
        """A worker cannot hold this generation beside the serving one (its memory budget)."""
        self.deferred.add(worker)

    def on_refused(self, worker: str, reason: str) -> None:
        """A worker could not prepare this generation."""
        self.refused[worker] = reason

    def on_worker_gone(self, worker: str) -> None:
        """A worker stopped beating: a restarted one loads the committed version itself."""
        self.expected.discard(worker)

    def outcome(self, now_ns: int) -> SwitchOutcome:
        """Commit when every expected worker is ready, roll when every one answered and some
        deferred; abort on a refusal or at the deadline."""
        if self.refused:
            return SwitchOutcome.ABORT
        if self.expected <= self.ready:
            return SwitchOutcome.COMMIT
        if self.expected <= self.ready | self.deferred:
            return SwitchOutcome.ROLL
        if self.deadline.expired(now_ns):
            return SwitchOutcome.ABORT
        return SwitchOutcome.PENDING

    def why_aborted(self) -> str:
        """A one-line reason for the rollback."""
        if self.refused:
            return "; ".join(f"{w}: {r}" for w, r in sorted(self.refused.items()))
        missing = sorted(self.expected - self.ready)
        return f"not ready in time: {', '.join(missing)}"


class RolloutOutcome(enum.Enum):
    """Where a rolling switch stands."""

    PENDING = "pending"
    DONE = "done"  # every worker serves the new version: commit it
    ROLLED_BACK = "rolled back"  # a step failed and every worker serves the old version again


@dataclass
class Rollout:
    """A switch rolled out one worker at a time.

    Each worker in `order` is told to switch (it stops taking work, drains, loads the new
    version and passes its known answer before it takes work again) only once the one before
    has switched. The first failure (a refusal, a step not done by its deadline, a worker that
    restarted or left) ends the forward pass, and every worker that switched is returned to
    `previous` the same way, one at a time, under `back_generation`. A restarted worker serves
    the committed version, which during a rollout is still `previous`.
    """

    generation: int
    model: ModelAnnouncement
    previous: ModelAnnouncement
    order: list[str]
    pids: dict[str, int]
    step_timeout_ns: int
    switched: list[str] = field(default_factory=list)
    current: str | None = None
    step_deadline: Deadline | None = None
    why: str = ""

    @property
    def back_generation(self) -> int:
        """The generation under which workers return to `previous`."""
        return self.generation + 1

    def next_step(self, now_ns: int) -> tuple[str, ModelAnnouncement, int] | None:
        """(worker, version, generation) to command now, when no worker is mid-step."""
        if self.current is not None:
            return None
        if not self.why:
            pending = [w for w in self.order if w not in self.switched]
            if not pending:
                return None
            self.current, target, generation = pending[0], self.model, self.generation
        elif self.switched:
            self.current, target, generation = (
                self.switched[-1],
                self.previous,
                self.back_generation,
            )
        else:
            return None
        self.step_deadline = Deadline.after(self.step_timeout_ns, now_ns)
        return self.current, target, generation

    def fail(self, why: str) -> None:
        """Record the first failure; from now on workers go back."""
        if not self.why:
            self.why = why

    def on_switched(self, worker: str, generation: int) -> None:
        """A worker finished its step."""
        if worker != self.current:
            return
        if generation == self.generation:
            # Done even when the rollout failed meanwhile: it is then returned like the rest.
            self.switched.append(worker)
        elif generation == self.back_generation and worker in self.switched:
            self.switched.remove(worker)
        else:
            return
        self.current = None

    def on_refused(self, worker: str, generation: int, reason: str) -> None:
        """A worker could not take its step (it serves what it served before)."""
        if worker != self.current or generation not in (self.generation, self.back_generation):
            return
        if self.why and worker in self.switched:
            # It could not return: it still serves the new version. Said, never hidden.
            self.switched.remove(worker)
            self.why += f"; {worker} could not return: {reason}"
        self.fail(f"{worker}: {reason}")
        self.current = None

    def on_heartbeat(self, worker: str, pid: int) -> None:
        """A worker's beat: one with a new pid was restarted, which fails the rollout."""
        known = self.pids.get(worker)
        if known is None or known == pid:
            return
        self.pids[worker] = pid
        self.fail(f"{worker} restarted during the rollout (pid {known} -> {pid})")
        if worker in self.switched:
            self.switched.remove(worker)  # the new process serves `previous`
        if worker == self.current:
            self.current = None

    def on_worker_gone(self, worker: str) -> None:
        """A worker stopped on purpose: it takes no further step."""
        if worker in self.order:
            self.order.remove(worker)
        if worker in self.switched:
            self.switched.remove(worker)
        if worker == self.current:
            self.fail(f"{worker} stopped during its switch")
            self.current = None

    def outcome(self, now_ns: int) -> RolloutOutcome:
        """Done when every worker switched; rolled back when every switched worker returned."""
        step = self.step_deadline
        if self.current is not None and step is not None and step.expired(now_ns):
            late, self.current = self.current, None
            if late in self.switched:  # a step back that never came: given up, and said
                self.switched.remove(late)
                self.why += f"; {late} did not return in time"
            else:  # it may still finish: it is returned like the switched ones
                self.fail(f"{late} did not switch in time")
                self.switched.append(late)
        if self.current is not None:
            return RolloutOutcome.PENDING
        if not self.why:
            done = all(w in self.switched for w in self.order)
            return RolloutOutcome.DONE if done else RolloutOutcome.PENDING
        return RolloutOutcome.PENDING if self.switched else RolloutOutcome.ROLLED_BACK

    def describe(self) -> str:
        """One line for `vigil model status`: where every worker stands."""
        head = f"{self.model.name} {self.previous.version} -> {self.model.version}"
        if self.why:
            head += f", rolling back ({self.why})"
        steps = []
        for worker in self.order:
            state = "switched" if worker in self.switched else "waiting"
            if worker == self.current:
                state = "returning" if self.why else "switching"
            steps.append(f"{worker} {state}")
        return f"{head}: {', '.join(steps)}"
