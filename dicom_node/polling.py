"""Adaptive polling of pynetdicom associations: fast while instances flow, nearly free when idle.

Each pynetdicom association has two threads that poll:

* the DUL thread sleeps `_run_loop_delay` (1 ms) whenever a pass of its loop found nothing to do, so
  between two C-STOREs it sleeps before it sends our response and again before it sees the next
  request. `_run_loop_delay` is a private attribute pynetdicom documents in a comment as the knob for
  this trade-off; we set it per association;
* the association thread (`Association._run_reactor`) sleeps a hard-coded `time.sleep(0.001)` per pass
  before it looks for the next decoded message, up to 1 ms per C-STORE, with no setting. `pace_reactors`
  replaces the `time` module *inside pynetdicom.association only* with `ReactorClock`: every function
  is `time`'s own, except that `sleep(0.001)` (that exact value; pynetdicom's other sleeps are 0.1,
  0.01 and 0.0001 s) sleeps the interval stored on the calling association thread, when there is one.
  Threads without it (our SCU associations, anything else) sleep pynetdicom's 1 ms as before.

A busy association (accepted, or a C-STORE just arrived) polls both loops every `fast_s`
(`node.receive_poll_us`, 20 µs): bench/README.md, "receive". After `idle_after_s` (0.5 s) without a
C-STORE both go to `idle_s` (20 ms): an idle association wakes 100 times a second in all, well under
1 % of a core (bench/README.md, "idle"), and its next C-STORE waits at most about 2 × 20 ms before
speeding it up again. A connection that has not associated yet keeps pynetdicom's 1 ms in the DUL (its
association thread blocks on a queue), so that a flood of half-open connections cannot make the node
poll them at 20 µs. If a future pynetdicom drops either knob nothing breaks: the node is only slower.
"""

from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Any

PYNETDICOM_DELAY_S = 0.001            # both loops' pace in pynetdicom 3
IDLE_DELAY_S = 0.02                   # both loops' pace for an idle association
DUL_ATTRIBUTE = "_run_loop_delay"
REACTOR_ATTRIBUTE = "_dicom_node_reactor_delay_s"


class ReactorClock:
    """The `time` module as pynetdicom.association sees it once `pace_reactors` has run."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds == PYNETDICOM_DELAY_S:
            seconds = getattr(threading.current_thread(), REACTOR_ATTRIBUTE, seconds)
        time.sleep(seconds)


def pace_reactors(module: ModuleType | None = None) -> bool:
    """Give `module` (pynetdicom.association) a ReactorClock as `time`; False if it has no `time`."""
    if module is None:
        import pynetdicom.association

        module = pynetdicom.association
    current = getattr(module, "time", None)
    if isinstance(current, ReactorClock):
        return True
    if current is not time:               # not the layout this was written for: leave it alone
        return False
    setattr(module, "time", ReactorClock())  # noqa: B010  (a module attribute, named on purpose)
    return True


class AdaptivePolling:
    def __init__(self, fast_s: float, idle_after_s: float = 0.5, idle_s: float = IDLE_DELAY_S) -> None:
        if not 0 < fast_s <= PYNETDICOM_DELAY_S:
            raise ValueError(f"fast poll interval must be in (0, {PYNETDICOM_DELAY_S}] s, got {fast_s}")
        if not PYNETDICOM_DELAY_S <= idle_s <= 1.0:
            raise ValueError(f"idle poll interval must be in [{PYNETDICOM_DELAY_S}, 1] s, got {idle_s}")
        if idle_after_s <= 0:
            raise ValueError(f"idle_after_s must be positive, got {idle_after_s}")
        self.fast_s, self.idle_s, self.idle_after_s = fast_s, idle_s, idle_after_s
        self._last: dict[Any, float] = {}           # association → last activity (monotonic)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def touch(self, assoc: Any) -> None:
        """An association is busy (accepted, or a C-STORE arrived): poll both its loops fast."""
        with self._lock:
            self._last[assoc] = time.monotonic()
        self._pace(assoc, self.fast_s)

    def forget(self, assoc: Any) -> None:
        with self._lock:
            self._last.pop(assoc, None)

    def sweep(self, now: float | None = None) -> int:
        """Slow down associations idle for idle_after_s; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [assoc for assoc, last in self._last.items() if now - last >= self.idle_after_s]
            for assoc in idle:
                del self._last[assoc]
        for assoc in idle:
            self._pace(assoc, self.idle_s)
        return len(idle)

    @staticmethod
    def _pace(assoc: Any, delay_s: float) -> None:
        dul = getattr(assoc, "dul", None)
        if hasattr(dul, DUL_ATTRIBUTE):
            setattr(dul, DUL_ATTRIBUTE, delay_s)
        setattr(assoc, REACTOR_ATTRIBUTE, delay_s)

    def start(self) -> None:
        pace_reactors()
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="assoc-polling", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.idle_after_s / 2):
            self.sweep()
