"""What every checker reports: findings, each with its level, the check that made it, and a fix.

The graph check (`vigil.launch.check`) and `vigil doctor` speak these words, so a finding reads
and serialises the same whichever checker found it.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = ["Finding", "Level"]


class Level(enum.StrEnum):
    """How a finding came out: an error fails the check (and stops a launch), a warning is
    reported, OK says a check passed."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One check's outcome: what was found where and, unless it is OK, how to fix it."""

    level: Level
    check: str
    """The rule or check that found it (`no-publisher`, `clock tai`, ...)."""
    subject: str = ""
    """What it is about (a node of the graph); empty when it concerns the target as a whole."""
    detail: str
    fix: str = ""
