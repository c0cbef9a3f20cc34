"""Adaptive polling of pynetdicom associations: fast while instances flow, pynetdicom's pace when idle.

pynetdicom's DUL thread sleeps `_run_loop_delay` (1 ms) whenever a pass of its loop found nothing to
do, so between two C-STOREs it sleeps before it sends our response and again before it sees the next
request: on a 512² series that is about a fifth of the time per instance. Polling every 20 µs
removes most of it (bench/README.md: 0.74 s → 0.61 s for 161 instances), but an idle association
polled that fast costs about a fifth of a core. So an association polls fast while it is busy and
goes back to pynetdicom's 1 ms after `idle_after_s` without a C-STORE; the next C-STORE speeds it up
again. `_run_loop_delay` is a private attribute pynetdicom documents in a comment as the knob for
this trade-off; if a future pynetdicom drops it, nothing breaks, the node is only slower.
"""

from __future__ import annotations

import threading
import time
from typing import Any

PYNETDICOM_DELAY_S = 0.001
_ATTRIBUTE = "_run_loop_delay"


class AdaptivePolling:
    def __init__(self, fast_s: float, idle_after_s: float = 0.5, idle_s: float = PYNETDICOM_DELAY_S) -> None:
        if not 0 < fast_s <= idle_s:
            raise ValueError(f"fast poll interval must be in (0, {idle_s}] s, got {fast_s}")
        if idle_after_s <= 0:
            raise ValueError(f"idle_after_s must be positive, got {idle_after_s}")
        self.fast_s, self.idle_s, self.idle_after_s = fast_s, idle_s, idle_after_s
        self._last: dict[Any, float] = {}           # DUL provider → last activity (monotonic)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def touch(self, dul: Any) -> None:
        """An association is busy (opened, or a C-STORE arrived): poll it fast."""
        if not hasattr(dul, _ATTRIBUTE):
            return
        with self._lock:
            self._last[dul] = time.monotonic()
        setattr(dul, _ATTRIBUTE, self.fast_s)

    def forget(self, dul: Any) -> None:
        with self._lock:
            self._last.pop(dul, None)

    def sweep(self, now: float | None = None) -> int:
        """Put associations idle for idle_after_s back to pynetdicom's pace; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [dul for dul, last in self._last.items() if now - last >= self.idle_after_s]
            for dul in idle:
                del self._last[dul]
        for dul in idle:
            setattr(dul, _ATTRIBUTE, self.idle_s)
        return len(idle)

    def start(self) -> None:
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
