"""Log lines rate-limited per cause: at most one per interval, the next line counts those held back.

Under an attack (or a fault that repeats every few milliseconds) a line per event would flood the
log and cost more than the event. `RateLimitedLog.log(cause, level, msg, *args)` writes the line if
no line for `cause` was written in the last `interval_s`; otherwise it only counts it, and the next
line written for that cause ends with "(N more like this since the last line)". Causes are short
fixed strings chosen by the caller (never attacker-controlled text), so the table stays small.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 1.0


@dataclass(slots=True)
class _Cause:
    last_at: float
    held_back: int = 0


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, *, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._logger, self._interval_s, self._clock = logger, interval_s, clock
        self._causes: dict[str, _Cause] = {}
        self._lock = threading.Lock()

    def log(self, cause: str, level: int, msg: str, *args: object) -> bool:
        """Write the line unless one for `cause` was written within the interval; True when written."""
        now = self._clock()
        with self._lock:
            entry = self._causes.get(cause)
            if entry is not None and now - entry.last_at < self._interval_s:
                entry.held_back += 1
                return False
            held_back = entry.held_back if entry is not None else 0
            self._causes[cause] = _Cause(now)
        if held_back:
            self._logger.log(level, msg + " (%d more like this since the last line)", *args, held_back)
        else:
            self._logger.log(level, msg, *args)
        return True

    def warning(self, cause: str, msg: str, *args: object) -> bool:
        return self.log(cause, logging.WARNING, msg, *args)
