"""AdaptivePolling: both loops of a busy association fast, both slow once it is idle; the reactor clock."""

from __future__ import annotations

import threading
import time
import types

import pytest

from dicom_node.polling import (
    IDLE_DELAY_S,
    PYNETDICOM_DELAY_S,
    REACTOR_ATTRIBUTE,
    AdaptivePolling,
    ReactorClock,
    pace_reactors,
)


class FakeDUL:
    def __init__(self) -> None:
        self._run_loop_delay = PYNETDICOM_DELAY_S


class FakeAssoc:
    def __init__(self) -> None:
        self.dul = FakeDUL()


class ForeignAssoc:
    """An association whose DUL has no `_run_loop_delay` (a pynetdicom that dropped the knob)."""

    def __init__(self) -> None:
        self.dul = object()


def paces(assoc: FakeAssoc) -> tuple[float, float | None]:
    return assoc.dul._run_loop_delay, getattr(assoc, REACTOR_ATTRIBUTE, None)


def test_busy_associations_poll_both_loops_fast_and_idle_ones_slow_down() -> None:
    polling = AdaptivePolling(20e-6, idle_after_s=0.5)
    busy, idle = FakeAssoc(), FakeAssoc()
    polling.touch(idle)
    polling.touch(busy)
    assert paces(busy) == paces(idle) == (20e-6, 20e-6)
    assert polling.sweep(time.monotonic()) == 0                  # nothing idle yet
    polling.touch(busy)
    idle_since = polling._last[idle]
    assert polling.sweep(idle_since + 0.5) == 1
    assert paces(idle) == (IDLE_DELAY_S, IDLE_DELAY_S) and paces(busy) == (20e-6, 20e-6)
    polling.touch(idle)                                          # the next C-STORE speeds it up again
    assert paces(idle) == (20e-6, 20e-6)


def test_forgotten_associations_and_ones_without_the_knob_are_left_alone() -> None:
    polling = AdaptivePolling(50e-6)
    closed, foreign = FakeAssoc(), ForeignAssoc()
    polling.touch(closed)
    polling.forget(closed)
    polling.touch(foreign)                                       # a pynetdicom without `_run_loop_delay`
    assert not hasattr(foreign.dul, "_run_loop_delay")
    polling.forget(foreign)
    assert polling.sweep(time.monotonic() + 10) == 0
    assert paces(closed) == (50e-6, 50e-6)


def test_the_sweeper_thread_slows_idle_associations() -> None:
    polling = AdaptivePolling(20e-6, idle_after_s=0.05)
    assoc = FakeAssoc()
    polling.start()
    try:
        polling.touch(assoc)
        deadline = time.monotonic() + 5
        while paces(assoc) != (IDLE_DELAY_S, IDLE_DELAY_S) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert paces(assoc) == (IDLE_DELAY_S, IDLE_DELAY_S)
    finally:
        polling.stop()


def test_the_reactor_clock_changes_only_the_1_ms_sleep_of_a_paced_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock = ReactorClock()
    paced = threading.current_thread()
    monkeypatch.setattr(paced, REACTOR_ATTRIBUTE, 0.02, raising=False)
    clock.sleep(PYNETDICOM_DELAY_S)                              # the reactor's pass: paced
    clock.sleep(0.01)                                            # kill()'s wait: pynetdicom's own
    clock.sleep(0.0001)
    monkeypatch.delattr(paced, REACTOR_ATTRIBUTE)
    clock.sleep(PYNETDICOM_DELAY_S)                              # an unpaced thread (our SCU): 1 ms
    assert slept == [0.02, 0.01, 0.0001, PYNETDICOM_DELAY_S]
    assert clock.monotonic is time.monotonic and clock.perf_counter is time.perf_counter


def test_pace_reactors_replaces_time_once_and_leaves_other_layouts_alone() -> None:
    module = types.ModuleType("fake_association")
    module.time = time  # type: ignore[attr-defined]
    assert pace_reactors(module) is True
    installed = module.time
    assert isinstance(installed, ReactorClock)
    assert pace_reactors(module) is True and module.time is installed
    other = types.ModuleType("other_layout")
    other.time = object()  # type: ignore[attr-defined]
    assert pace_reactors(other) is False and not isinstance(other.time, ReactorClock)
    assert pace_reactors(types.ModuleType("no_time")) is False


def test_pynetdicom_association_gets_the_clock() -> None:
    import pynetdicom.association

    assert pace_reactors() is True
    assert isinstance(getattr(pynetdicom.association, "time", None), ReactorClock)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fast_s": 0.0}, r"fast poll interval must be in \(0, 0.001\] s, got 0.0"),
     ({"fast_s": 0.01}, r"fast poll interval must be in \(0, 0.001\] s, got 0.01"),
     ({"fast_s": 1e-5, "idle_s": 1e-4}, r"idle poll interval must be in \[0.001, 1\] s, got 0.0001"),
     ({"fast_s": 1e-5, "idle_after_s": 0}, r"idle_after_s must be positive, got 0")],
)
def test_invalid_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptivePolling(**kwargs)
