"""AdaptivePolling: fast while an association is busy, pynetdicom's 1 ms once it is idle."""

from __future__ import annotations

import time

import pytest

from dicom_node.polling import PYNETDICOM_DELAY_S, AdaptivePolling


class FakeDUL:
    def __init__(self) -> None:
        self._run_loop_delay = PYNETDICOM_DELAY_S


def test_busy_associations_poll_fast_and_idle_ones_slow_down() -> None:
    polling = AdaptivePolling(20e-6, idle_after_s=0.5)
    busy, idle = FakeDUL(), FakeDUL()
    polling.touch(idle)
    polling.touch(busy)
    assert busy._run_loop_delay == idle._run_loop_delay == 20e-6
    now = time.monotonic()
    assert polling.sweep(now) == 0                       # nothing idle yet
    polling.touch(busy)
    idle_since = polling._last[idle]
    assert polling.sweep(idle_since + 0.5) == 1
    assert idle._run_loop_delay == PYNETDICOM_DELAY_S and busy._run_loop_delay == 20e-6
    polling.touch(idle)                                  # the next C-STORE speeds it up again
    assert idle._run_loop_delay == 20e-6


def test_forgotten_and_foreign_objects_are_left_alone() -> None:
    polling = AdaptivePolling(50e-6)
    closed, foreign = FakeDUL(), object()
    polling.touch(closed)
    polling.forget(closed)
    polling.touch(foreign)                               # a pynetdicom without the knob: ignored
    assert polling.sweep(time.monotonic() + 10) == 0
    assert closed._run_loop_delay == 50e-6


def test_the_sweeper_thread_slows_idle_associations() -> None:
    polling = AdaptivePolling(20e-6, idle_after_s=0.05)
    dul = FakeDUL()
    polling.start()
    try:
        polling.touch(dul)
        deadline = time.monotonic() + 5
        while dul._run_loop_delay != PYNETDICOM_DELAY_S and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dul._run_loop_delay == PYNETDICOM_DELAY_S
    finally:
        polling.stop()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fast_s": 0.0}, r"fast poll interval must be in \(0, 0.001\] s, got 0.0"),
     ({"fast_s": 0.01}, r"fast poll interval must be in \(0, 0.001\] s, got 0.01"),
     ({"fast_s": 1e-5, "idle_after_s": 0}, r"idle_after_s must be positive, got 0")],
)
def test_invalid_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptivePolling(**kwargs)
