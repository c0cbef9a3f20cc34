"""The node's periodic jobs (APScheduler): each guarded, so a failing job logs at most once a second
per cause instead of a traceback on every run, and the next run tries again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.ratelog import RateLimitedLog
from dicom_node.stage import StageHealth
from dicom_node.transient import describe

logger = logging.getLogger(__name__)


class Timers:
    def __init__(self) -> None:
        self._scheduler = BackgroundScheduler(daemon=True)
        self._log = RateLimitedLog(logger)

    def every(self, name: str, seconds: float, job: Callable[[], object], *, now: bool = False) -> None:
        """Run `job` every `seconds` (one run at a time), the first time at once when `now`."""
        first = {"next_run_time": datetime.now(UTC)} if now else {}
        self._scheduler.add_job(self._guarded(name, job), "interval", seconds=seconds, max_instances=1,
                                coalesce=True, id=name, **first)

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def health(self) -> StageHealth:
        running = self._scheduler.running
        return StageHealth("timers", running, "timers running" if running else "timers stopped")

    def _guarded(self, name: str, job: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                job()
            except Exception as exc:  # a timer boundary: the next run tries again
                self._log.error(f"{name}:{type(exc).__name__}", "timer %s failed: %s", name, describe(exc))
        return run
