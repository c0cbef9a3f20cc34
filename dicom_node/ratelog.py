"""Log lines that cannot flood: one line per cause per interval, with a count of what was held back.

A stage that fails every 250 ms while the disk is full, or a guesser hammering the login, must not
write a traceback four times a second. `RateLimitedLog` lets the first line of a cause through,
drops repeats for `interval_s`, and adds "(N similar in the last X s)" to the next line it lets
through. Causes are short strings chosen by the caller (e.g. "synthesis:OperationalError").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 1.0
MAX_CAUSES = 1024          # forget the oldest causes beyond this many (a guesser rotating addresses)


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._logger, self._interval_s, self._clock = logger, interval_s, clock
        self._last: dict[str, float] = {}        # cause -> when its last line was written
        self._held: dict[str, int] = {}          # cause -> lines dropped since then
        self._lock = threading.Lock()

    def log(self, level: int, cause: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Write `msg % args` unless `cause` was logged less than `interval_s` ago; True if written."""
        now = self._clock()
        with self._lock:
            last = self._last.get(cause)
            if last is not None and now - last < self._interval_s:
                self._held[cause] = self._held.get(cause, 0) + 1
                return False
            held = self._held.pop(cause, 0)
            self._last.pop(cause, None)
            self._last[cause] = now
            if len(self._last) > MAX_CAUSES:
                oldest = next(iter(self._last))
                self._last.pop(oldest)
                self._held.pop(oldest, None)
        if held:
            since = now - last if last is not None else 0.0
            msg = f"{msg} ({held} similar in the last {since:.0f} s)"
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def error(self, cause: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, cause, msg, *args, exc_info=exc_info)

    def warning(self, cause: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self.log(logging.WARNING, cause, msg, *args, exc_info=exc_info)

    def forget(self, cause: str) -> None:
        """The cause has ended (e.g. the disk has room again): its next line is written at once."""
        with self._lock:
            self._last.pop(cause, None)
            self._held.pop(cause, None)
