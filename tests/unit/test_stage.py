"""Stages never die of an error, back off, say why they wait, and are restarted if their thread ends."""

from __future__ import annotations

import errno
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy.exc import OperationalError

from dicom_node.stage import PendingWrite, Stage, StageWait, Supervisor
from dicom_node.transient import describe, is_transient


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def db_full() -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full"))


# -- transient ---------------------------------------------------------------------------------------
def test_transient_errors_are_the_machines() -> None:
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(db_full())
    assert not is_transient(OSError(errno.ENOENT, "No such file or directory"))
    assert not is_transient(ValueError("bad series"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("writing failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    assert describe(OSError(errno.ENOSPC, "No space left on device")) == "OSError: ENOSPC (No space left on device)"
    assert describe(db_full()) == "OperationalError: database or disk is full"


# -- stages ------------------------------------------------------------------------------------------
def test_a_failing_step_backs_off_and_the_stage_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []

    def step() -> float | None:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            raise db_full()
        return 0.05

    stage = Stage("synthesis", step, backoff_initial_s=0.05, backoff_max_s=0.2)
    with caplog.at_level(logging.WARNING, logger="dicom_node.stage"):
        stage.start()
        wait_until(lambda: len(calls) == 2, what="a second try")
        health = stage.health()
        assert not health.ok and "database or disk is full" in health.detail and "retrying" in health.detail
        wait_until(lambda: len(calls) >= 5, what="the stage to go on")
        assert stage.health().ok
        stage.request_stop()
        stage.join(2.0)
    gaps = [b - a for a, b in itertools.pairwise(calls)][:3]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.09 and gaps[2] >= 0.18          # 0.05, 0.1, 0.2: exponential
    assert not stage.alive
    # Three failures within a second of each other: one log line, no traceback for a transient error.
    warnings = [r for r in caplog.records if "database or disk is full" in r.getMessage()]
    assert len(warnings) == 1 and not warnings[0].exc_info


def test_a_stage_wait_is_reported_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    room = threading.Event()

    def step() -> float | None:
        if not room.is_set():
            raise StageWait("disk", "series 1.2.3 needs about 48 MB; 3 MB are free", 0.02)
        return 0.05

    stage = Stage("synthesis", step)
    with caplog.at_level(logging.INFO, logger="dicom_node.stage"):
        stage.start()
        wait_until(lambda: "needs about 48 MB" in stage.health().detail, what="the wait to show")
        assert not stage.health().ok
        room.set()
        wait_until(lambda: stage.health().ok, what="the stage to go on")
        stage.request_stop()
        stage.join(2.0)
    assert all(not r.exc_info for r in caplog.records)
    assert any("going on again" in r.getMessage() for r in caplog.records)


class Fatal(BaseException):
    """Something no stage boundary catches (as a thread would die of it)."""


def test_the_supervisor_restarts_a_dead_stage_and_health_says_so_meanwhile() -> None:
    runs: list[int] = []

    def step() -> float | None:
        runs.append(1)
        if len(runs) == 1:
            raise Fatal
        return 0.05

    stage = Stage("send-pacs", step)
    supervisor = Supervisor([stage])
    supervisor.start()
    wait_until(lambda: not stage.alive, what="the thread to die")
    health = supervisor.health()[0]
    assert not health.ok and health.detail == "send-pacs is not running (it died: Fatal)"
    assert supervisor.check() == 1
    wait_until(lambda: len(runs) >= 2, what="the restarted stage to run")
    assert stage.health().ok and stage.restarts == 1
    supervisor.stop(2.0)
    assert supervisor.check() == 0                      # a stopped stage is not restarted


def test_a_stage_refuses_a_bad_backoff() -> None:
    with pytest.raises(ValueError, match=r"stage backoff must satisfy 0 < initial <= max, got 2, 1"):
        Stage("x", lambda: None, backoff_initial_s=2, backoff_max_s=1)


def test_pending_write_is_kept_until_it_lands() -> None:
    attempts: list[int] = []

    def write() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise db_full()

    pending = PendingWrite()
    for _ in range(2):
        with pytest.raises(OperationalError):
            pending.run(write) if not attempts else pending.run()
    pending.run()
    assert len(attempts) == 3
    pending.run()                                       # nothing kept any more
    assert len(attempts) == 3
