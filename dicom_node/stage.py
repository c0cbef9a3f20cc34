"""A pipeline stage: one loop in its own thread that errors never end, and a supervisor for the rest.

`step()` does one unit of work and returns None to be called again at once, or the seconds to wait
(woken early by the stage's `wake` event). An error in a step is logged (at most once a second per
cause), the stage backs off exponentially and tries again; `StageWait` is an expected pause (no
disk space for the next series) that is reported the same way without a traceback. A thread that
dies anyway (a BaseException) is restarted by `Supervisor.check()`; until then `health()` says it
is not running, so `/readyz` turns 503.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dicom_node.ratelog import RateLimitedLog
from dicom_node.transient import describe, is_transient

logger = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
JOIN_SLICE_S = 0.1


class StageWait(Exception):
    """The stage cannot go on yet for a reason outside the work (e.g. too little disk space)."""

    def __init__(self, cause: str, detail: str, retry_s: float) -> None:
        super().__init__(detail)
        self.cause, self.detail, self.retry_s = cause, detail, retry_s


@dataclass(frozen=True, slots=True)
class StageHealth:
    name: str
    ok: bool
    detail: str


Step = Callable[[], float | None]


class Stage:
    def __init__(self, name: str, step: Step, *, wake: threading.Event | None = None,
                 backoff_initial_s: float = BACKOFF_INITIAL_S, backoff_max_s: float = BACKOFF_MAX_S) -> None:
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError(f"stage backoff must satisfy 0 < initial <= max, got {backoff_initial_s}, "
                             f"{backoff_max_s}")
        self.name, self._step = name, step
        self.wake = wake if wake is not None else threading.Event()
        self._initial_s, self._max_s = backoff_initial_s, backoff_max_s
        self._delay_s = backoff_initial_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._problem = ""                       # why the stage is waiting or failing, "" when healthy
        self._died = ""                          # why the last thread ended, when it died
        self.restarts = 0
        self._log = RateLimitedLog(logger)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def health(self) -> StageHealth:
        if not self.alive:
            why = f" (it died: {self._died})" if self._died else ""
            return StageHealth(self.name, False, f"{self.name} is not running{why}")
        if self._problem:
            return StageHealth(self.name, False, f"{self.name}: {self._problem}")
        return StageHealth(self.name, True, f"{self.name} running")

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    wait_s = self._step()
                except StageWait as pause:
                    self._problem = pause.detail
                    self._log.warning(f"wait:{pause.cause}", "%s waits: %s", self.name, pause.detail)
                    self._sleep(pause.retry_s)
                    continue
                except Exception as exc:  # the stage boundary: log, back off, never end the loop
                    self._failed(exc)
                    continue
                if self._problem:
                    logger.info("%s going on again (was: %s)", self.name, self._problem)
                self._problem, self._delay_s = "", self._initial_s
                if wait_s is not None:
                    self._sleep(wait_s)
        except BaseException as exc:  # the thread ends here; the supervisor starts a new one
            self._died = describe(exc)
            logger.critical("%s stopped by %s", self.name, self._died, exc_info=True)

    def _failed(self, exc: Exception) -> None:
        delay = self._delay_s
        self._delay_s = min(self._max_s, self._delay_s * 2)
        transient = is_transient(exc)
        what = describe(exc)
        self._problem = f"{'waiting' if transient else 'failing'} ({what}); retrying in {delay:.1f} s"
        level = logging.WARNING if transient else logging.ERROR
        self._log.log(level, f"{type(exc).__name__}", "%s: %s; retrying in %.1f s", self.name, what, delay,
                      exc_info=not transient)
        self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        if self._stop.is_set():
            return
        self.wake.wait(timeout=max(0.0, seconds))
        self.wake.clear()


class PendingWrite:
    """A ledger write a stage must land before it takes new work: kept when it fails, tried again."""

    def __init__(self) -> None:
        self._write: Callable[[], None] | None = None

    def run(self, write: Callable[[], None] | None = None) -> None:
        """Do `write` (or the one kept from before); it stays kept if it raises."""
        if write is not None:
            self._write = write
        if self._write is not None:
            self._write()
            self._write = None


class Supervisor:
    """Starts, watches and stops a set of stages; `check()` restarts any thread that died."""

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.stages: list[Stage] = list(stages)

    def add(self, stage: Stage) -> Stage:
        self.stages.append(stage)
        return stage

    def start(self) -> None:
        for stage in self.stages:
            stage.start()

    def check(self) -> int:
        """Restart every stage whose thread ended without being asked to; returns how many."""
        restarted = 0
        for stage in self.stages:
            if not stage.alive and not stage.stopping:
                stage.restarts += 1
                logger.error("restarting %s (restart %d)", stage.name, stage.restarts)
                stage.start()
                restarted += 1
        return restarted

    def stop(self, timeout_s: float) -> None:
        for stage in self.stages:
            stage.request_stop()
        for stage in self.stages:
            stage.join(timeout_s / max(1, len(self.stages)) + JOIN_SLICE_S)

    def health(self) -> list[StageHealth]:
        return [stage.health() for stage in self.stages]
