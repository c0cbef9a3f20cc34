"""The disk watermark: above it C-STORE is refused (0xA700) and no series is synthesized.

Synthesis also needs room for what it writes: a derived series is about `factor` times its source
(uncompressed), so a series is only taken when the disk stays below the watermark with its derived
series written (`room_for`). A series that does not fit waits; it is never rejected for it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicom_node.receive import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
HEADER_ALLOWANCE_BYTES = 16 << 10        # per derived file: the header, references, provenance


@dataclass(frozen=True, slots=True)
class Room:
    fits: bool
    needed_bytes: int
    free_bytes: int            # free below the watermark (may be negative)


class DiskGuard:
    """Refuse stores (0xA700) above a disk-usage watermark; re-checked at most once a second.

    The spool reserve (`reserved`: its bytes) counts as free: received instances overwrite it."""

    def __init__(self, path: Path, watermark: float, clock: Callable[[], float] = time.monotonic,
                 reserved: Callable[[], int] = lambda: 0) -> None:
        self._path, self._watermark, self._clock, self._reserved = path, watermark, clock, reserved
        self._checked_at, self._status = -1e9, STATUS_SUCCESS
        self._lock = threading.Lock()

    @property
    def watermark(self) -> float:
        return self._watermark

    def __call__(self) -> int:
        with self._lock:
            now = self._clock()
            if now - self._checked_at >= CHECK_INTERVAL_S:
                usage = shutil.disk_usage(self._path)
                full = (usage.used - self._reserved()) / usage.total > self._watermark
                if full and self._status == STATUS_SUCCESS:
                    logger.error("disk above %.0f%% at %s: refusing stores", self._watermark * 100, self._path)
                elif not full and self._status != STATUS_SUCCESS:
                    logger.warning("disk below watermark again at %s: accepting stores", self._path)
                self._status = STATUS_OUT_OF_RESOURCES if full else STATUS_SUCCESS
                self._checked_at = now
            return self._status

    def room_for(self, needed_bytes: int) -> Room:
        """Whether writing `needed_bytes` more keeps the disk at or below the watermark (checked now)."""
        usage = shutil.disk_usage(self._path)
        below = int(self._watermark * usage.total) - usage.used + self._reserved()
        return Room(needed_bytes <= below, needed_bytes, below)

    def reserve_may_grow(self, needed_bytes: int) -> bool:
        """Whether the spool reserve may grow by `needed_bytes`: the disk's real use (the reserve counted
        as used) stays at or below the watermark, and the reserve within half the room above it.

        Stores and synthesis count the reserve as free, and a derived series is written into new files,
        so the disk's real use may pass the watermark by the reserve until the reserve gives space back
        (every 5 s); half the room above the watermark bounds that below a full disk."""
        usage = shutil.disk_usage(self._path)
        headroom = int((1.0 - self._watermark) * usage.total)
        return (usage.used + needed_bytes <= int(self._watermark * usage.total)
                and self._reserved() + needed_bytes <= headroom // 2)


def derived_bytes_estimate(files: list[Path], factor: int) -> int:
    """Bytes a derived series of these source files will take: factor·(N−1)+1 uncompressed int16
    slices of the first file's matrix, plus headers. Unreadable headers estimate from file sizes."""
    if not files:
        return 0
    slices = factor * (len(files) - 1) + 1
    try:
        header = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        per_slice = int(header.get("Rows", 0) or 0) * int(header.get("Columns", 0) or 0) * 2
    except Exception:  # the series will be rejected with its reason at assembly; estimate anyway
        per_slice = 0
    if per_slice <= 0:
        per_slice = max(f.stat().st_size for f in files if f.exists()) if any(f.exists() for f in files) else 0
    return slices * (per_slice + HEADER_ALLOWANCE_BYTES)
