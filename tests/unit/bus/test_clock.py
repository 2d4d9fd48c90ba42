"""The wall clock with an injected step: every reader of the offset file steps at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vigil.bus import clock

pytestmark = pytest.mark.verifies("SR-TIM-002")

_READ = (
    "import sys, time; from vigil.bus import clock\n"
    "if len(sys.argv) > 1: clock.use_offset_file(sys.argv[1])\n"
    "print(time.time_ns(), clock.wall_ns())"
)


def _offset_seen(offset: Path | None = None) -> int:
    """The step a new process reads: its wall clock less its system clock, read together."""
    argv = [sys.executable, "-c", _READ, *([str(offset)] if offset else [])]
    system, wall = map(
        int, subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    )
    return wall - system


def test_without_an_offset_file_wall_time_is_the_system_clock() -> None:
    """`wall_ns` reads the system's wall clock when no step is injected."""
    assert abs(_offset_seen()) < 500_000_000


def test_a_step_reaches_another_process_reading_the_same_file(tmp_path: Path) -> None:
    """A step written by one process moves the wall clock another process reads."""
    offset = tmp_path / "clock.offset"
    clock.step(offset, 5_000_000_000)
    assert abs(_offset_seen(offset) - 5_000_000_000) < 500_000_000


def test_steps_add_up(tmp_path: Path) -> None:
    """A step forward and one back leave the clock where it was."""
    offset = tmp_path / "clock.offset"
    clock.step(offset, 1_000_000_000)
    clock.step(offset, -1_000_000_000)
    assert abs(_offset_seen(offset)) < 500_000_000
