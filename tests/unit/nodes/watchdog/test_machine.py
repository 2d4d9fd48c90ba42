"""The safety state machine: every transition, driven by an injected clock."""

from __future__ import annotations

import pytest

from vigil.nodes.watchdog._machine import MachineConfig, SafetyMachine, Transition
from vigil.schemas import SafetyState

pytestmark = pytest.mark.verifies("SR-WDG-001", "SR-WDG-002")

NORMAL = SafetyState.NORMAL
DEGRADED = SafetyState.DEGRADED
RECOVERING = SafetyState.RECOVERING
SAFE_STOP = SafetyState.SAFE_STOP

DELAY = 1_000
CONFIG = MachineConfig(
    timeout_limit=3, recovery_delay_ns=DELAY, max_recoveries=3, min_dwell_ns=DELAY // 2
)


def _machine(state: SafetyState = NORMAL, now_ns: int = 0) -> SafetyMachine:
    return SafetyMachine(CONFIG, now_ns, state)


def _recovering(machine: SafetyMachine, now_ns: int) -> int:
    """Drive a DEGRADED machine into RECOVERING; returns the time it got there."""
    assert machine.state is DEGRADED
    at = max(machine.since_ns, now_ns) + DELAY
    assert machine.tick(at, faults_active=False) is not None
    assert machine.state is RECOVERING
    return at


def test_starts_in_the_given_state() -> None:
    """A new machine is NORMAL by default, with no transitions yet."""
    machine = _machine(now_ns=5)
    assert (machine.state, machine.since_ns, machine.transitions) == (NORMAL, 5, 0)


def test_three_consecutive_timeouts_degrade() -> None:
    """The third consecutive inference timeout moves NORMAL to DEGRADED."""
    machine = _machine()
    assert machine.inference_timeout(1) is None
    assert machine.inference_timeout(2) is None
    transition = machine.inference_timeout(3)
    assert transition == Transition(NORMAL, DEGRADED, "3 consecutive inference timeouts", 3)
    assert (machine.state, machine.since_ns, machine.transitions) == (DEGRADED, 3, 1)


def test_a_success_breaks_the_timeout_run() -> None:
    """Two timeouts, a success and two more timeouts do not degrade."""
    machine = _machine()
    machine.inference_timeout(1)
    machine.inference_timeout(2)
    machine.inference_ok()
    assert machine.inference_timeout(3) is None
    assert machine.inference_timeout(4) is None
    assert machine.state is NORMAL
    assert machine.inference_timeout(5) is not None


def test_timeout_count_restarts_after_degrading() -> None:
    """After a timeout run degrades, the count starts again from zero."""
    machine = _machine()
    for t in range(3):
        machine.inference_timeout(t)
    assert machine.consecutive_timeouts == 0


@pytest.mark.parametrize("cause", ["heartbeat missing: ingest", "topic stale: infer/result"])
def test_any_fault_degrades(cause: str) -> None:
    """A single fault moves NORMAL to DEGRADED with the fault as cause."""
    machine = _machine()
    assert machine.fault(cause, 7) == Transition(NORMAL, DEGRADED, cause, 7)


def test_fault_while_degraded_changes_nothing() -> None:
    """A further fault while DEGRADED is not a transition."""
    machine = _machine(DEGRADED)
    assert machine.fault("again", 5) is None
    assert machine.state is DEGRADED


def test_recovery_waits_for_the_delay() -> None:
    """DEGRADED stays until recovery_delay_ns have passed since degrading."""
    machine = _machine()
    machine.fault("f", 100)
    assert machine.tick(100 + DELAY - 1, faults_active=False) is None
    transition = machine.tick(100 + DELAY, faults_active=False)
    assert transition == Transition(DEGRADED, RECOVERING, "watchdog timer expired", 100 + DELAY)


def test_no_recovery_while_a_fault_is_active() -> None:
    """The timer does not expire while a fault is still active, however long."""
    machine = _machine()
    machine.fault("f", 0)
    assert machine.tick(100 * DELAY, faults_active=True) is None
    assert machine.state is DEGRADED


def test_a_new_fault_restarts_the_recovery_delay() -> None:
    """A fault seen while DEGRADED pushes the recovery back by a full delay."""
    machine = _machine()
    machine.fault("first", 0)
    machine.fault("second", 600)
    assert machine.tick(DELAY, faults_active=False) is None
    assert machine.tick(600 + DELAY, faults_active=False) is not None


def test_timeouts_while_degraded_restart_the_delay() -> None:
    """A timeout run while DEGRADED counts as a new fault for the recovery delay."""
    machine = _machine()
    machine.fault("first", 0)
    for t in (10, 20, 500):
        machine.inference_timeout(t)
    assert machine.tick(DELAY, faults_active=False) is None
    assert machine.tick(500 + DELAY, faults_active=False) is not None


def test_starting_degraded_waits_a_full_delay() -> None:
    """A machine created DEGRADED recovers no sooner than the delay after its start."""
    machine = _machine(DEGRADED, now_ns=50)
    assert machine.tick(50 + DELAY - 1, faults_active=False) is None
    assert machine.tick(50 + DELAY, faults_active=False) is not None


@pytest.mark.parametrize("state", [NORMAL, RECOVERING, SAFE_STOP])
def test_tick_only_acts_when_degraded(state: SafetyState) -> None:
    """Time alone moves no state but DEGRADED."""
    machine = _machine(state)
    assert machine.tick(100 * DELAY, faults_active=False) is None
    assert machine.state is state


def test_probe_pass_recovers_to_normal() -> None:
    """A passing probe moves RECOVERING to NORMAL and clears the failed count."""
    machine = _machine()
    machine.fault("f", 0)
    at = _recovering(machine, 0)
    machine.failed_recoveries = 2
    transition = machine.probe_result(True, "1 boxes match", at + 1)
    assert transition == Transition(
        RECOVERING, NORMAL, "health probe passed: 1 boxes match", at + 1
    )
    assert machine.failed_recoveries == 0


def test_probe_fail_degrades_again() -> None:
    """A failing probe moves RECOVERING back to DEGRADED and counts a failed recovery."""
    machine = _machine()
    machine.fault("f", 0)
    at = _recovering(machine, 0)
    transition = machine.probe_result(False, "no boxes", at + 1)
    assert transition == Transition(RECOVERING, DEGRADED, "health probe failed: no boxes", at + 1)
    assert machine.failed_recoveries == 1


def test_failed_probe_restarts_the_recovery_delay() -> None:
    """After a failed probe the next recovery waits a full delay again."""
    machine = _machine()
    machine.fault("f", 0)
    at = _recovering(machine, 0)
    machine.probe_result(False, "x", at + 5)
    assert machine.tick(at + 5 + DELAY - 1, faults_active=False) is None
    assert machine.tick(at + 5 + DELAY, faults_active=False) is not None


@pytest.mark.parametrize("state", [NORMAL, DEGRADED, SAFE_STOP])
def test_probe_result_outside_recovering_is_ignored(state: SafetyState) -> None:
    """A probe result only matters while RECOVERING."""
    machine = _machine(state)
    assert machine.probe_result(True, "late", 1) is None
    assert machine.probe_result(False, "late", 2) is None
    assert machine.state is state


def test_fault_while_recovering_fails_the_recovery() -> None:
    """A fault during RECOVERING moves back to DEGRADED and counts a failed recovery."""
    machine = _machine()
    machine.fault("f", 0)
    at = _recovering(machine, 0)
    assert machine.fault("heartbeat missing", at + 1) == Transition(
        RECOVERING, DEGRADED, "heartbeat missing", at + 1
    )
    assert machine.failed_recoveries == 1


def test_timeouts_while_recovering_fail_the_recovery() -> None:
    """A timeout run during RECOVERING fails the recovery like any fault."""
    machine = _machine()
    machine.fault("f", 0)
    at = _recovering(machine, 0)
    machine.inference_timeout(at + 1)
    machine.inference_timeout(at + 2)
    transition = machine.inference_timeout(at + 3)
    assert transition is not None
    assert (transition.previous, transition.state) == (RECOVERING, DEGRADED)


def test_max_failed_recoveries_reach_safe_stop() -> None:
    """The third failed recovery in a row moves to SAFE_STOP, naming the count."""
    machine = _machine()
    machine.fault("f", 0)
    now = 0
    for attempt in range(1, 4):
        now = _recovering(machine, now)
        transition = machine.probe_result(False, "wrong answer", now)
        assert transition is not None
        if attempt < 3:
            assert transition.state is DEGRADED
    assert transition.state is SAFE_STOP
    assert transition.cause == "health probe failed: wrong answer; recovery failed 3x"
    assert machine.state is SAFE_STOP


def test_faults_while_recovering_count_towards_safe_stop() -> None:
    """Failed recoveries by probe and by fault add up to the same limit."""
    machine = _machine()
    machine.fault("f", 0)
    now = _recovering(machine, 0)
    machine.probe_result(False, "x", now)
    now = _recovering(machine, now)
    machine.fault("heartbeat missing", now)
    now = _recovering(machine, now)
    transition = machine.fault("topic stale", now)
    assert transition is not None
    assert transition.state is SAFE_STOP


def test_a_successful_recovery_resets_the_count() -> None:
    """Failed recoveries must be consecutive: a pass in between starts the count again."""
    machine = _machine()
    machine.fault("f", 0)
    now = 0
    for _ in range(2):
        now = _recovering(machine, now)
        machine.probe_result(False, "x", now)
    now = _recovering(machine, now)
    machine.probe_result(True, "ok", now)
    machine.fault("f", now)
    for _ in range(2):
        now = _recovering(machine, now)
        machine.probe_result(False, "x", now)
    assert machine.state is DEGRADED


def test_safe_stop_is_final() -> None:
    """Nothing moves the machine out of SAFE_STOP."""
    machine = _machine(SAFE_STOP)
    assert machine.fault("f", 1) is None
    for t in range(3):
        assert machine.inference_timeout(t) is None
    assert machine.tick(10**15, faults_active=False) is None
    assert machine.probe_result(True, "ok", 2) is None
    assert (machine.state, machine.transitions) == (SAFE_STOP, 0)


def test_transitions_are_counted() -> None:
    """Every state change increments `transitions` and sets `since_ns`."""
    machine = _machine()
    machine.fault("f", 10)
    at = _recovering(machine, 10)
    machine.probe_result(True, "ok", at + 3)
    assert (machine.transitions, machine.since_ns, machine.state) == (3, at + 3, NORMAL)


def _cycle(machine: SafetyMachine, at: int) -> int:
    """One fault and its recovery, starting at `at`; returns when NORMAL was reached."""
    machine.fault("f", at)
    due = machine.recovery_due_ns(at)
    assert due is not None
    assert machine.tick(due, faults_active=False) is not None
    assert machine.probe_result(True, "ok", due + 1) is not None
    return due + 1


def test_degraded_is_held_for_the_minimum_dwell() -> None:
    """However short the recovery delay, DEGRADED lasts at least the minimum dwell."""
    machine = SafetyMachine(MachineConfig(recovery_delay_ns=10, min_dwell_ns=1_000), 0, NORMAL)
    machine.fault("f", 0)
    assert machine.tick(999, faults_active=False) is None
    assert machine.tick(1_000, faults_active=False) is not None


def test_transitions_of_the_last_minute_are_counted() -> None:
    """The rate of transitions counts those of the last minute only."""
    machine = _machine()
    at = _cycle(machine, 0)
    assert machine.transitions_per_min(at) == 3
    assert machine.transitions_per_min(at + 60_000_000_000) == 0


def test_flapping_doubles_the_recovery_delay() -> None:
    """Each degradation past the flap limit within a minute doubles the recovery delay."""
    machine = _machine()
    at = 0
    for _ in range(CONFIG.flap_limit):
        at = _cycle(machine, at + 1)
    assert not machine.flapping(at)
    machine.fault("again", at + 1)
    assert machine.flapping(at + 1)
    assert machine.recovery_delay_ns(at + 1) == 2 * DELAY
    assert machine.tick(at + 1 + DELAY, faults_active=False) is None
    assert machine.tick(at + 1 + 2 * DELAY, faults_active=False) is not None


def test_the_recovery_delay_is_capped() -> None:
    """Flapping slows recovery down to the cap, never further."""
    config = MachineConfig(
        recovery_delay_ns=DELAY, min_dwell_ns=0, flap_limit=0, max_recovery_delay_ns=4 * DELAY
    )
    machine = SafetyMachine(config, 0, NORMAL)
    at = 0
    for _ in range(10):
        at = _cycle(machine, at + 1)
    assert machine.recovery_delay_ns(at) == 4 * DELAY
