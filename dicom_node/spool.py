"""The spool: every file the node keeps, written atomically, one folder per series. The only module
that knows the layout:

incoming/<series_uid>/<sop_uid>.dcm     received instances (exact bytes received, with file meta)
rejected/<series_uid>/                  a series we cannot process, with a `reason` file
derived/<derived_series_uid>/           the derived series we wrote, until retention removes it:
    <sop_uid>.dcm, manifest.txt         its instances, and their SOP UIDs in slice order
derived/.tmp-<derived_series_uid>/      a derived series being written (published by one rename)
reserve/<size>.<n>                      finished files kept to be overwritten by received ones (reserve.py)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_node.reserve import FOLDER as RESERVE_FOLDER
from dicom_node.reserve import SpoolReserve

MANIFEST = "manifest.txt"       # SOP Instance UIDs of a derived series in slice order: a sender needs no sorting
STAGING_PREFIX = ".tmp-"        # files and folders being written; never read as data


@dataclass(frozen=True, slots=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    path: Path
    size: int
    digest: str          # sha256 of the stored bytes
    mtime_ns: int = 0    # of the spool file, so a restart can tell recorded files from unrecorded ones


def atomic_write(path: Path, data: bytes | memoryview | Sequence[bytes | memoryview], fsync: bool = True,
                 reuse: Path | None = None) -> int:
    """Write `data` (one buffer or several, written in order) so a reader sees nothing or all of it;
    into the file `reuse` (a reserved file, overwritten and cut to length) when one is given.

    Returns the file's mtime_ns."""
    parts = [data] if isinstance(data, bytes | memoryview) else list(data)
    tmp = path.with_name(f"{STAGING_PREFIX}{path.name}-{threading.get_ident()}")   # unique per writing thread
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if reuse is not None:
        try:
            os.replace(reuse, tmp)
            flags = os.O_WRONLY | os.O_CREAT        # overwrite in place: its blocks (and pages) exist
        except OSError:
            reuse = None
    fd = os.open(tmp, flags, 0o644)
    try:
        try:
            total = sum(len(p) for p in parts)
            written = os.writev(fd, parts)
            if written != total:                    # a short write: finish part by part
                view = memoryview(b"".join(parts))[written:]
                while view:
                    view = view[os.write(fd, view):]
            if reuse is not None and os.fstat(fd).st_size > total:
                os.ftruncate(fd, total)
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
    def __init__(self, root: Path, fsync: bool = True, reserve_bytes: int = 0) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.rejected = root / "rejected"
        self.derived = root / "derived"
        self._fsync = fsync
        for d in (self.incoming, self.rejected, self.derived):
            d.mkdir(parents=True, exist_ok=True)
        self.reserve = SpoolReserve(root / RESERVE_FOLDER, reserve_bytes)

    def put(self, study_uid: str, series_uid: str, sop_uid: str,
            data: bytes | memoryview | Sequence[bytes | memoryview]) -> StoredInstance:
        """Store one instance's bytes, given whole or in parts (UIDs already checked with `checked_uid`)."""
        parts = [data] if isinstance(data, bytes | memoryview) else list(data)
        folder = self.incoming / series_uid
        folder.mkdir(exist_ok=True)
        path = folder / f"{sop_uid}.dcm"
        size = sum(len(p) for p in parts)
        reuse = self.reserve.take(size) if self.reserve.enabled else None
        mtime_ns = atomic_write(path, parts, fsync=self._fsync, reuse=reuse)
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        return StoredInstance(study_uid, series_uid, sop_uid, path, size, digest.hexdigest(), mtime_ns)

    def incoming_files(self) -> Iterator[tuple[str, str, Path, int]]:
        """(series UID, SOP UID, path, mtime_ns) of every received file; stray temp files are removed
        (they were never acknowledged)."""
        for series_dir in os.scandir(self.incoming):
            if not series_dir.is_dir():
                continue
            for entry in os.scandir(series_dir.path):
                if entry.name.startswith(STAGING_PREFIX):
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

    def remove_source(self, series_uid: str) -> None:
        """Delete a series' received (and rejected) instances (into the reserve while it has room)."""
        for folder in (self.incoming / series_uid, self.rejected / series_uid):
            self._recycle(folder)
            shutil.rmtree(folder, ignore_errors=True)

    def _recycle(self, folder: Path) -> None:
        """Move the folder's .dcm files into the reserve while it has room (the rest is deleted after)."""
        if not self.reserve.enabled or not folder.is_dir():
            return
        for entry in os.scandir(folder):
            if entry.name.endswith(".dcm") and not self.reserve.give(Path(entry.path)):
                return

    # -- derived series -----------------------------------------------------------------------
    def derived_dir(self, derived_series_uid: str) -> Path:
        return self.derived / derived_series_uid

    def derived_uids(self) -> list[str]:
        """The derived series published in the spool (not those being written)."""
        return sorted(e.name for e in os.scandir(self.derived) if e.is_dir() and not e.name.startswith(STAGING_PREFIX))

    def stage_derived(self, derived_series_uid: str) -> Path:
        """An empty folder to write a derived series into (a previous unfinished one is removed)."""
        staging = self.derived / f"{STAGING_PREFIX}{derived_series_uid}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def publish_derived(self, derived_series_uid: str, sop_uids: Sequence[str]) -> Path:
        """Write the manifest, make the staged series durable, and put it in place of any older copy."""
        staging = self.derived / f"{STAGING_PREFIX}{derived_series_uid}"
        atomic_write(staging / MANIFEST, "\n".join(sop_uids).encode() + b"\n", fsync=False)
        _fsync_folder(staging)
        final = self.derived_dir(derived_series_uid)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def discard_staged(self, derived_series_uid: str) -> None:
        """Give a half-written derived series' space back."""
        shutil.rmtree(self.derived / f"{STAGING_PREFIX}{derived_series_uid}", ignore_errors=True)

    def derived_files(self, derived_series_uid: str) -> list[Path]:
        """The files of a derived series in slice order (from its manifest); [] when it is not held."""
        return manifest_files(self.derived_dir(derived_series_uid))

    def remove_derived(self, derived_series_uid: str) -> None:
        """Delete a derived series (and any unfinished copy of it)."""
        if not derived_series_uid:                  # derived/"" is the whole derived folder
            raise ValueError("remove_derived needs a derived series UID, got an empty one")
        folder = self.derived_dir(derived_series_uid)
        self._recycle(folder)
        shutil.rmtree(folder, ignore_errors=True)
        self.discard_staged(derived_series_uid)


def manifest_files(directory: Path) -> list[Path]:
    """The files a derived series folder's manifest lists, in slice order; [] without a manifest."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return []
    return [directory / f"{uid}.dcm" for uid in manifest.read_text(encoding="ascii").split()]


def _fsync_folder(folder: Path) -> None:
    """Every file in `folder`, then the folder itself, on disk."""
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
