"""Every log line about a series carries its UID: a ContextVar set by the handler and the workers."""

from __future__ import annotations

import logging
from contextvars import ContextVar

current_series: ContextVar[str] = ContextVar("current_series", default="-")


class SeriesFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.series = current_series.get()
        return True
