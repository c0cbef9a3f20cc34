"""The spool: received bytes on disk, written atomically, one folder per series.

incoming/<series_uid>/<sop_uid>.dcm     received instances (exact bytes received, with file meta)
rejected/<series_uid>/                  a series we cannot process, with a `reason` file
derived/<derived_series_uid>/           the derived series we wrote, until sent everywhere
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    path: Path
    size: int
    digest: str          # sha256 of the stored bytes
    mtime_ns: int = 0    # of the spool file, so a restart can tell recorded files from unrecorded ones


def atomic_write(path: Path, data: bytes | memoryview | Sequence[bytes | memoryview], fsync: bool = True) -> int:
    """Write `data` (one buffer or several, written in order) so a reader sees nothing or all of it.

    Returns the file's mtime_ns."""
    parts = [data] if isinstance(data, bytes | memoryview) else list(data)
    tmp = path.with_name(f".tmp-{path.name}-{threading.get_ident()}")   # unique per writing thread
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            total = sum(len(p) for p in parts)
            written = os.writev(fd, parts)
            if written != total:                    # a short write: finish part by part
                view = memoryview(b"".join(parts))[written:]
                while view:
                    view = view[os.write(fd, view):]
            if fsync:
                os.fdatasync(fd)
            mtime_ns = os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return mtime_ns
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Spool:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.rejected = root / "rejected"
        self.derived = root / "derived"
        self._fsync = fsync
        for d in (self.incoming, self.rejected, self.derived):
            d.mkdir(parents=True, exist_ok=True)

    def put(self, study_uid: str, series_uid: str, sop_uid: str,
            data: bytes | memoryview | Sequence[bytes | memoryview]) -> StoredInstance:
        """Store one instance's bytes, given whole or in parts (UIDs already checked with `checked_uid`)."""
        parts = [data] if isinstance(data, bytes | memoryview) else list(data)
        folder = self.incoming / series_uid
        folder.mkdir(exist_ok=True)
        path = folder / f"{sop_uid}.dcm"
        mtime_ns = atomic_write(path, parts, fsync=self._fsync)
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        return StoredInstance(study_uid, series_uid, sop_uid, path, sum(len(p) for p in parts), digest.hexdigest(),
                              mtime_ns)

    def incoming_files(self) -> Iterator[tuple[str, str, Path, int]]:
        """(series UID, SOP UID, path, mtime_ns) of every received file; stray temp files are removed
        (they were never acknowledged)."""
        for series_dir in os.scandir(self.incoming):
            if not series_dir.is_dir():
                continue
            for entry in os.scandir(series_dir.path):
                if entry.name.startswith(".tmp-"):
                    Path(entry.path).unlink(missing_ok=True)
                elif entry.name.endswith(".dcm"):
                    yield series_dir.name, entry.name[:-4], Path(entry.path), entry.stat().st_mtime_ns

    def instance_files(self, series_uid: str) -> list[Path]:
        """Every file held for a series: newly received ones win over older rejected copies."""
        files: dict[str, Path] = {}
        for folder in (self.rejected / series_uid, self.incoming / series_uid):
            if folder.is_dir():
                files.update((p.name, p) for p in folder.glob("*.dcm"))
        return [files[name] for name in sorted(files)]

    def reject(self, series_uid: str, reason: str, detail: str) -> Path:
        """Move a series to rejected/ and write its reason beside the instances; nothing is deleted."""
        target = self.rejected / series_uid
        target.mkdir(exist_ok=True)
        source = self.incoming / series_uid
        if source.is_dir():
            for f in source.glob("*.dcm"):
                os.replace(f, target / f.name)
            shutil.rmtree(source, ignore_errors=True)
        atomic_write(target / "reason", f"{reason}\n{detail}\n".encode(), fsync=self._fsync)
        return target

    def derived_dir(self, derived_series_uid: str) -> Path:
        return self.derived / derived_series_uid

    def remove_source(self, series_uid: str) -> None:
        for folder in (self.incoming / series_uid, self.rejected / series_uid):
            shutil.rmtree(folder, ignore_errors=True)
