"""`vigil demo`'s verdict: its rules name what failed, and it reads the log as verify does."""

from __future__ import annotations

from typing import Any

from vigil.nodes.logger.store import FaultClass, VerifyReport
from vigil.tools.demo_cmd import RULES, judge, log_verdict


def _summary(**changes: Any) -> dict[str, Any]:
    """A summary of a demo in which everything went right."""
    summary: dict[str, Any] = {
        "sent": 40,
        "sent_invalid": 5,
        "answered": 35,
        "rejected": 5,
        "errors": 0,
        "error_codes": {},
        "unanswered": 0,
        "final_state": "NORMAL",
        "launcher_exit": 0,
        "log_entries": 30,
        "log": {"intact": True, "integrity_faults": []},
    }
    summary.update(changes)
    return summary


def _failed(summary: dict[str, Any]) -> list[str]:
    return [v["rule"] for v in judge(summary) if not v["passed"]]


def test_a_clean_demo_passes_every_rule() -> None:
    """Every rule holds when every frame ended as it should and the log is intact."""
    verdicts = judge(_summary())
    assert [v["rule"] for v in verdicts] == [r.name for r in RULES]
    assert all(v["passed"] for v in verdicts)


def test_timeouts_fail_the_failure_rule_alone_and_are_named() -> None:
    """Frames that timed out fail "no request failed", which says how many and why."""
    summary = _summary(answered=30, errors=5, error_codes={"DEADLINE_EXCEEDED": 5})
    (failed,) = [v for v in judge(summary) if not v["passed"]]
    assert failed["rule"] == "no request failed or went unanswered"
    assert failed["found"] == "DEADLINE_EXCEEDED 5"


def test_a_few_refusals_for_load_pass_and_many_fail() -> None:
    """RESOURCE_EXHAUSTED is the answer to overload: up to 5% of valid frames may get it."""
    few = _summary(answered=34, errors=1, error_codes={"RESOURCE_EXHAUSTED": 1})
    many = _summary(answered=25, errors=10, error_codes={"RESOURCE_EXHAUSTED": 10})
    assert _failed(few) == []
    assert _failed(many) == ["at most 5% of valid frames refused for load (RESOURCE_EXHAUSTED)"]


def test_an_invalid_frame_answered_fails_the_rejection_rule() -> None:
    """An invalid frame that was served instead of rejected fails two rules, both named."""
    summary = _summary(rejected=4, errors=1, error_codes={"UNREJECTED": 1})
    assert _failed(summary) == [
        "every invalid frame rejected with INVALID_ARGUMENT",
        "no request failed or went unanswered",
    ]


def test_safe_stop_and_a_broken_log_fail() -> None:
    """A run that ends in SAFE_STOP, or a log whose chain breaks, fails."""
    summary = _summary(
        final_state="SAFE_STOP",
        launcher_exit=1,
        log={"intact": False, "integrity_faults": ["CHAIN group 3: bad link"]},
    )
    assert _failed(summary) == [
        "safety state NORMAL at the end, launcher stopped cleanly",
        "sealed log intact (seals, chain, sequence, time order)",
    ]


def test_fallback_clock_is_reported_apart_from_integrity() -> None:
    """A store stamped by a fallback clock is intact; its time quality is the store's own
    words, and the exit code is the one `vigil log verify` gives."""
    report = VerifyReport(entries=12, first_seq=1, last_seq=12, clean=True, verdict="clean")
    report.time_quality = "fallback clock recorded: 12 entries stamped by CLOCK_TAI"
    report.add(FaultClass.CLOCK, "store", "12 entries stamped by CLOCK_TAI")
    verdict = log_verdict(report, VerifyReport(verdict="clean"))
    assert verdict["intact"] is True and verdict["integrity_faults"] == []
    assert verdict["time_quality"] == report.time_quality
    assert verdict["verdict"] == "clean, evidence store clean"
    assert verdict["verify_exit_code"] == report.exit_code == int(FaultClass.CLOCK)


def test_integrity_faults_of_either_store_are_listed() -> None:
    """A broken chain in the log or a bad digest in the evidence store is an integrity fault,
    each named with where it is."""
    report = VerifyReport(entries=3, verdict="damaged")
    report.add(FaultClass.CHAIN, "group 0", "entry 2 does not link to 1")
    evidence = VerifyReport(entries=1, verdict="damaged")
    evidence.add(FaultClass.DIGEST, "group 1", "SHA-256 differs")
    verdict = log_verdict(report, evidence)
    assert verdict["intact"] is False
    assert verdict["integrity_faults"] == [
        "CHAIN group 0: entry 2 does not link to 1",
        "evidence store: DIGEST group 1: SHA-256 differs",
    ]
