"""The spool reserve: files the node has finished with, kept to be overwritten by the next received ones.

Writing a received instance into a new file is most of what receiving costs the node: on the
development VM's ext4 a new 530 KB file takes 3.8 ms to write and fdatasync, while overwriting a file
whose blocks exist already takes 0.63 ms when it has the same size and its pages are still cached,
and 1.5 ms when it must be shortened or its pages were evicted (bench/README.md, "receive"). So the
node keeps a reserve of such files in `<storage_dir>/reserve/`, up to `node.spool_reserve_mb`:

* what it has finished with goes back into it instead of being deleted: the received instances of a
  series once retention or an operator removes them, and a derived series' files likewise
  (`Spool.remove_source`, `Spool.remove_derived`), each overwritten with zeros in place on the way in,
  so no patient data stays in the reserve (and, unlike a deleted file's, its old blocks are overwritten);
* while the node is idle (no C-STORE for `IDLE_BEFORE_FILL_S`), `fill` (a timer, every 5 s, for at
  most `FILL_SLICE_S`) tops it up with zero-filled files of the size most instances had lately, each
  flushed to disk, at most `FILL_RATE_BYTES_S`, so
  a node that has just started receives at the same pace; it grows only while the disk's real use
  stays below `node.disk_watermark` and the reserve within half the room above it
  (`DiskGuard.reserve_may_grow`), and gives space back otherwise. The disk guard counts the reserve as
  free space: received instances overwrite it;
* `take(size)` hands out the file of that exact size if there is one, else the smallest larger one,
  else the largest; `Spool.put` renames it to its temporary name and overwrites it (and shortens it if
  need be) before the usual fdatasync and rename. Nothing else changes: a crash between the rename and
  the overwrite leaves a temporary file, which is removed at start as ever.

Files are named `<size>.<n>`; the reserve is rebuilt from the folder at start. A reserve of 0 MB
turns all of this off (every received instance is a new file, every finished file is deleted).
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

FOLDER = "reserve"
DEFAULT_FILL_SIZE = 520 << 10            # a 512 x 512 16-bit CT image and its header
IDLE_BEFORE_FILL_S = 1.0                 # no C-STORE for this long: the node is idle, fill may write
FILL_SLICE_S = 4.0                       # one fill call writes at most this long (the timer runs every 5 s)
FILL_RATE_BYTES_S = 64 << 20             # fill writes at most this fast: 512 MB take 8 s of an idle node
NAME = re.compile(r"^(\d+)\.(\d+)$")
RECENT_SIZES = 64


class SpoolReserve:
    """Thread-safe: association threads take, retention gives, one thread fills."""

    def __init__(self, folder: Path, capacity_bytes: int, fill_size: int = DEFAULT_FILL_SIZE,
                 clock: Callable[[], float] = time.monotonic, fill_rate_bytes_s: float = FILL_RATE_BYTES_S) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"the spool reserve cannot be negative, got {capacity_bytes} bytes")
        if fill_size < 1:
            raise ValueError(f"fill_size must be positive, got {fill_size}")
        self.folder, self.capacity_bytes, self._fill_size, self._clock = folder, capacity_bytes, fill_size, clock
        self._fill_rate = fill_rate_bytes_s
        self._lock = threading.Lock()
        self._sizes: list[int] = []              # sorted sizes of the files held
        self._names: dict[int, list[str]] = {}   # size -> names of that size
        self._bytes = 0
        self._counter = 0
        self._recent: deque[int] = deque(maxlen=RECENT_SIZES)
        self._last_take = -1e9
        self.taken = self.missed = 0             # puts that overwrote a reserved file / had to create one
        if capacity_bytes:
            folder.mkdir(parents=True, exist_ok=True)
            self._scan()

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def files(self) -> int:
        with self._lock:
            return len(self._sizes)

    def _scan(self) -> None:
        for entry in os.scandir(self.folder):
            match = NAME.match(entry.name)
            if not match or not entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)          # ours alone: a stray is a half-made blank
                continue
            size = entry.stat().st_size
            self._counter = max(self._counter, int(match.group(2)) + 1)
            if self._bytes + size > self.capacity_bytes or size != int(match.group(1)):
                Path(entry.path).unlink(missing_ok=True)          # over a lowered capacity, or torn
                continue
            self._add(size, entry.name)

    def _add(self, size: int, name: str) -> None:
        bisect.insort(self._sizes, size)
        self._names.setdefault(size, []).append(name)
        self._bytes += size

    def _remove(self, size: int) -> str:
        names = self._names[size]
        name = names.pop()
        if not names:
            del self._names[size]
        del self._sizes[bisect.bisect_left(self._sizes, size)]
        self._bytes -= size
        return name

    def _new_name(self, size: int) -> str:
        self._counter += 1
        return f"{size}.{self._counter}"

    def take(self, size: int) -> Path | None:
        """A reserved file to overwrite with `size` bytes (now the caller's to rename), or None."""
        with self._lock:
            self._recent.append(size)
            self._last_take = self._clock()
            if not self._sizes:
                self.missed += 1
                return None
            i = bisect.bisect_left(self._sizes, size)
            pick = self._sizes[i] if i < len(self._sizes) else self._sizes[-1]
            self.taken += 1
            return self.folder / self._remove(pick)

    def give(self, path: Path) -> bool:
        """Keep a finished file for reuse if there is room: moved here and overwritten with zeros in place
        (what it held, patient data included, is gone from it, and its blocks stay allocated); False: the
        caller deletes it."""
        if not self.enabled:
            return False
        try:
            size = path.stat().st_size
        except OSError:
            return False
        with self._lock:
            if size == 0 or self._bytes + size > self.capacity_bytes:
                return False
            name = self._new_name(size)
            self._bytes += size                          # held for it while it is zeroed
        zeroing = self.folder / f".{name}"               # a stray if we stop half-way: removed at the next scan
        try:
            os.replace(path, zeroing)
            _overwrite_with_zeros(zeroing, size)
            os.replace(zeroing, self.folder / name)
        except OSError:
            zeroing.unlink(missing_ok=True)
            with self._lock:
                self._bytes -= size
            return False
        with self._lock:
            self._bytes -= size
            self._add(size, name)
        return True

    def fill_size(self) -> int:
        """The size to fill with: the median of recent received instances, else the default."""
        with self._lock:
            return int(statistics.median(self._recent)) if self._recent else self._fill_size

    def idle(self) -> bool:
        with self._lock:
            return self._clock() - self._last_take >= IDLE_BEFORE_FILL_S

    def fill(self, stop: threading.Event, room: Callable[[int], bool], max_s: float = FILL_SLICE_S) -> int:
        """Top the reserve up with flushed zero-filled files while the node is idle and `room(n)` says n
        more bytes fit below the disk watermark, for at most `max_s`; give files back while it does not.
        Returns bytes written (the caller calls again later for the rest)."""
        written = 0
        ends = self._clock() + max_s
        while not stop.is_set() and self._clock() < ends:
            size = self.fill_size()
            if not room(0):
                if not self._release_one():
                    return written
                continue
            if self.bytes + size > self.capacity_bytes or not room(size):
                return written
            if not self.idle():
                return written                  # receiving: the next call looks again
            with self._lock:
                name = self._new_name(size)
            path = self.folder / name
            try:
                _write_blank(path, size)
            except OSError as exc:
                logger.warning("could not fill the spool reserve (%s); it stays at %d MB", exc.strerror,
                               self.bytes >> 20)
                path.unlink(missing_ok=True)
                return written
            with self._lock:
                self._add(size, name)
            written += size
            stop.wait(size / self._fill_rate)
        return written

    def _release_one(self) -> bool:
        with self._lock:
            if not self._sizes:
                return False
            name = self._remove(self._sizes[-1])
        (self.folder / name).unlink(missing_ok=True)
        return True


ZEROS = bytes(1 << 20)


def _write_zeros(fd: int, size: int) -> None:
    left = size
    while left:
        left -= os.write(fd, memoryview(ZEROS)[:min(left, len(ZEROS))])


def _write_blank(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_zeros(fd, size)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _overwrite_with_zeros(path: Path, size: int) -> None:
    """Zeros over the whole file, in place (no truncation: its blocks stay); written back by the kernel."""
    fd = os.open(path, os.O_WRONLY)
    try:
        _write_zeros(fd, size)
    finally:
        os.close(fd)
