"""Rate-limited log lines: one per cause per interval, the next one counts those held back."""

from __future__ import annotations

import logging

import pytest

from dicom_node.ratelog import MAX_CAUSES, RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_cause_per_interval_and_the_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("test.ratelog"), interval_s=1.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        written = [log.warning("login", "failed login from %s", f"10.0.0.{i}") for i in range(50)]
        assert log.warning("lockout", "locked %s", "10.0.0.9")            # another cause has its own budget
        clock.now += 0.5
        assert not log.warning("login", "failed login from %s", "10.0.0.60")
        clock.now += 0.6
        assert log.log(logging.INFO, "login", "failed login from %s", "10.0.0.61")
    assert written == [True] + [False] * 49
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["failed login from 10.0.0.0", "locked 10.0.0.9",
                     "failed login from 10.0.0.61 (50 similar in the last 1 s)"]
    assert caplog.records[-1].levelno == logging.INFO


def test_a_cause_that_ended_is_logged_at_once_when_it_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("test.ratelog"), clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        assert log.error("disk", "disk full")
        assert not log.error("disk", "disk full")
        log.forget("disk")                                   # space came back
        assert log.error("disk", "disk full")
    assert [r.getMessage() for r in caplog.records] == ["disk full", "disk full"]


def test_the_table_of_causes_stays_bounded() -> None:
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("test.ratelog"), clock=clock)
    for i in range(MAX_CAUSES + 50):
        log.warning(f"cause-{i}", "line")
    assert len(log._last) == MAX_CAUSES                       # the oldest were forgotten
    assert log.warning("cause-0", "line")                    # so the first cause is written again


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s must be positive, got 0"):
        RateLimitedLog(logging.getLogger("test.ratelog"), interval_s=0)
