"""The rolling switch: one worker at a time, and any failure returns every worker."""

from __future__ import annotations

import pytest

from vigil.bus.deadline import Deadline
from vigil.nodes.loader._switch import Rollout, RolloutOutcome, Switch, SwitchOutcome
from vigil.schemas import ModelAnnouncement

pytestmark = pytest.mark.verifies("SR-MDL-002", "SR-MDL-003")

OLD = ModelAnnouncement(name="m", version="1", path="/1", sha256="a" * 64, size=1, generation=1)
NEW = ModelAnnouncement(name="m", version="2", path="/2", sha256="b" * 64, size=1, generation=2)


def _rollout() -> Rollout:
    return Rollout(
        generation=2,
        model=NEW,
        previous=OLD,
        order=["w1", "w2", "w3"],
        pids={"w1": 11, "w2": 12, "w3": 13},
        step_timeout_ns=1000,
    )


def test_deferred_workers_turn_a_switch_into_a_rollout() -> None:
    """Once every worker answered and some could not hold two versions, the switch rolls."""
    switch = Switch(
        generation=2, model=NEW, expected={"w1", "w2"}, deadline=Deadline.after(10, 0), started_ns=0
    )
    switch.on_ready("w1")
    assert switch.outcome(0) is SwitchOutcome.PENDING
    switch.on_deferred("w2")
    assert switch.outcome(0) is SwitchOutcome.ROLL


def test_workers_switch_one_at_a_time_in_order() -> None:
    """The next worker is asked only once the one before has switched; then it is done."""
    rollout = _rollout()
    assert rollout.next_step(0) == ("w1", NEW, 2)
    assert rollout.next_step(0) is None  # w1 is mid-step
    rollout.on_switched("w2", 2)  # not the worker asked: ignored
    assert rollout.next_step(0) is None
    rollout.on_switched("w1", 2)
    assert rollout.next_step(0) == ("w2", NEW, 2)
    rollout.on_switched("w2", 2)
    assert rollout.next_step(0) == ("w3", NEW, 2)
    assert rollout.outcome(0) is RolloutOutcome.PENDING
    rollout.on_switched("w3", 2)
    assert rollout.outcome(0) is RolloutOutcome.DONE


def test_a_refusal_returns_every_switched_worker_one_at_a_time() -> None:
    """When w2 refuses, w1 (switched) is returned to the old version; then it is rolled
    back, naming why."""
    rollout = _rollout()
    rollout.next_step(0)
    rollout.on_switched("w1", 2)
    rollout.next_step(0)
    rollout.on_refused("w2", 2, "known answer differs")
    assert rollout.outcome(0) is RolloutOutcome.PENDING
    assert rollout.next_step(0) == ("w1", OLD, 3)
    assert "rolling back" in rollout.describe()
    rollout.on_switched("w1", 3)
    assert rollout.outcome(0) is RolloutOutcome.ROLLED_BACK
    assert rollout.why == "w2: known answer differs"


def test_a_restarted_worker_fails_the_rollout() -> None:
    """A worker beating with a new pid was restarted: the rollout fails; a switched one that
    restarted serves the old version already and needs no return."""
    rollout = _rollout()
    rollout.next_step(0)
    rollout.on_switched("w1", 2)
    rollout.next_step(0)  # w2 switching
    rollout.on_heartbeat("w1", 11)
    assert not rollout.why
    rollout.on_heartbeat("w1", 99)
    assert "w1 restarted" in rollout.why
    rollout.on_switched("w2", 2)  # w2 finished its step: it goes back too
    assert rollout.next_step(0) == ("w2", OLD, 3)
    rollout.on_switched("w2", 3)
    assert rollout.outcome(0) is RolloutOutcome.ROLLED_BACK


def test_a_step_past_its_deadline_fails_the_rollout() -> None:
    """A worker that does not finish its step in time fails the rollout, and is told to
    return too (it may still finish on the new version)."""
    rollout = _rollout()
    rollout.next_step(0)
    assert rollout.outcome(999) is RolloutOutcome.PENDING
    assert rollout.outcome(1000) is RolloutOutcome.PENDING
    assert rollout.why == "w1 did not switch in time"
    assert rollout.next_step(1000) == ("w1", OLD, 3)
    rollout.on_switched("w1", 3)
    assert rollout.outcome(1000) is RolloutOutcome.ROLLED_BACK
