"""Fault attribution: only deadline misses the system caused count towards DEGRADED."""

from __future__ import annotations

import pytest

from vigil.nodes.watchdog._node import _system_miss
from vigil.schemas import DiagCode, ErrorCode, ErrorReply

pytestmark = pytest.mark.verifies("SR-DLN-003")


def _reply(code: ErrorCode, diag: str) -> ErrorReply:
    return ErrorReply(code=code, message="m", diag_code=diag)


def test_a_miss_of_an_admitted_request_counts() -> None:
    """DEADLINE_EXCEEDED for a request admitted with a feasible budget is a system miss."""
    assert _system_miss(_reply(ErrorCode.DEADLINE_EXCEEDED, DiagCode.DEADLINE_EXCEEDED))


def test_a_budget_impossible_on_arrival_does_not_count() -> None:
    """A budget spent or below the measured service time on arrival is the client's fault."""
    assert not _system_miss(_reply(ErrorCode.DEADLINE_EXCEEDED, DiagCode.DEADLINE_INFEASIBLE))


def test_a_miss_of_a_frame_size_never_measured_does_not_count() -> None:
    """A request admitted while its frame size had no price yet had a budget nobody could
    judge: its miss (DIA-3004) is not taken for a fault."""
    assert not _system_miss(_reply(ErrorCode.DEADLINE_EXCEEDED, DiagCode.DEADLINE_UNPRICED))


def test_an_error_that_names_no_code_counts_to_be_safe() -> None:
    """A DEADLINE_EXCEEDED without a diagnostic code (an older ingest) still counts."""
    assert _system_miss(_reply(ErrorCode.DEADLINE_EXCEEDED, ""))


def test_overload_refusals_are_not_misses() -> None:
    """RESOURCE_EXHAUSTED from admission (refused early) is never a deadline miss."""
    assert not _system_miss(_reply(ErrorCode.RESOURCE_EXHAUSTED, DiagCode.OVERLOADED))
