"""Preview renders: one at a time on a low-priority thread of their own, bounded waits, results cached.

A cold preview reads up to `web.preview_max_slices` files of a series (see `preview.py`); both views
of a series come from one read and are cached together (LRU, `CACHE_ENTRIES` series). Renders never
use the web server's shared thread pool: they run one by one on the `web-preview` thread, niced on
Linux so that synthesis keeps the cores. At most `MAX_QUEUED_RENDERS` different series wait or draw
at once; a request beyond that, or one whose render takes longer than `web.preview_wait_s`, gets
`PreviewBusyError` (503 with Retry-After) at once instead of a thread. A render that outlives its
request still finishes and fills the cache for the next one. Requests for a series already being
drawn wait for that same render.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dicom_node.web.preview import render_pngs

logger = logging.getLogger(__name__)

MAX_QUEUED_RENDERS = 4
CACHE_ENTRIES = 64
RETRY_AFTER_S = 2
PREVIEW_NICE_INCREMENT = 10
MAX_NICE = 19

FileLister = Callable[[], Sequence[Path]]


class PreviewBusyError(Exception):
    """The renderer is busy; try again after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _lower_priority() -> None:
    """Nice the render thread (Linux: priorities are per thread); elsewhere, leave it."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid)
                                                 + PREVIEW_NICE_INCREMENT))
    except OSError as exc:
        logger.warning("web: could not lower the preview thread's priority: %s", exc.strerror)


class PreviewQueue:
    def __init__(self, *, max_slices: int, wait_s: float, max_queued: int = MAX_QUEUED_RENDERS,
                 capacity: int = CACHE_ENTRIES) -> None:
        if max_queued < 1 or capacity < 1 or not wait_s > 0:
            raise ValueError(f"bad preview queue settings: max_queued={max_queued}, capacity={capacity}, "
                             f"wait_s={wait_s}")
        self.max_slices, self.wait_s = max_slices, wait_s
        self._max_queued, self._capacity = max_queued, capacity
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-preview",
                                            initializer=_lower_priority)
        self._cache: OrderedDict[Hashable, dict[str, bytes]] = OrderedDict()
        self._pending: dict[Hashable, Future[dict[str, bytes]]] = {}
        self._lock = threading.Lock()
        self.renders = 0            # renders started (for tests and the log)

    async def pngs(self, key: Hashable, files: FileLister) -> dict[str, bytes]:
        """PNG bytes by view for `key`, from the cache or one render of `files()` (raised errors pass through)."""
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            future = self._pending.get(key)
            if future is None:
                if len(self._pending) >= self._max_queued:
                    raise PreviewBusyError(f"{len(self._pending)} previews are being drawn; try again shortly")
                future = self._executor.submit(self._render, key, files)
                self._pending[key] = future
                self.renders += 1
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.wait_s)
        except TimeoutError:
            raise PreviewBusyError(f"the preview is still being drawn after {self.wait_s:g} s "
                                   "(web.preview_wait_s); try again shortly") from None

    def _render(self, key: Hashable, files: FileLister) -> dict[str, bytes]:
        try:
            pngs = render_pngs(files(), self.max_slices)
        except BaseException:
            with self._lock:
                self._pending.pop(key, None)
            raise
        with self._lock:
            self._cache[key] = pngs
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
            self._pending.pop(key, None)
        return pngs

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
