"""Read the spool back into what the ledger said about each series (for `rebuild-ledger`).

Per source series, from its folders (see `spool`):

* `derived/<uid>/` whose first file's ReferencedSeriesSequence names the source: the series was
  synthesized; `delivered/<destination>.sent` records (see `delivery`) say which destinations have it.
  The source is read from the DICOM files rather than a side file so that derived series written
  before delivery records existed are found too; the manifest gives the slice count.
* `rejected/<uid>/reason`: the series was rejected; first line the reason code, then the detail.
* Whichever of the two happened last (the reason file's and the manifest's mtimes) is the outcome.
  Instance files newer than the outcome arrived after it: the series is received again (processed
  anew after the quiet period), as the ledger re-opens such a series.
* Instances without an outcome (only in `incoming/`, or `rejected/` without a reason file: a rejection
  cut short) are `receiving`: they will be processed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicom_node.delivery import Delivery, deliveries
from dicom_node.ledger import SeriesState
from dicom_node.spool import MANIFEST, STAGING_PREFIX, Spool, manifest_files
from dicom_node.uids import checked_uid

logger = logging.getLogger(__name__)

READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class HeldInstance:
    sop_uid: str
    size: int
    digest: str              # sha256 of the file, as the receiver computed it
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class DerivedCopy:
    series_uid: str
    source_series_uid: str
    study_uid: str
    count: int
    written_ns: int          # the manifest's mtime
    delivered: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    """One series row to write, with its instances and (for a synthesized series) its deliveries."""

    series_uid: str
    study_uid: str
    state: SeriesState
    reason: str
    detail: str
    instances: tuple[HeldInstance, ...]
    derived: DerivedCopy | None
    outcome_at: float | None     # when it was rejected or derived; None: not processed yet


@dataclass(frozen=True, slots=True)
class SpoolScan:
    series: tuple[SeriesPlan, ...]
    warnings: tuple[str, ...]


def _series_dirs(area: Path) -> list[str]:
    if not area.is_dir():
        return []
    with os.scandir(area) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(STAGING_PREFIX))


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _header(path: Path, *tags: str) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(tags))


def _read_derived(directory: Path, warnings: list[str]) -> DerivedCopy | None:
    files = manifest_files(directory)
    if not files:
        warnings.append(f"derived/{directory.name}: no {MANIFEST}; left in place, not in the ledger")
        return None
    try:
        ds = _header(files[0], "ReferencedSeriesSequence", "StudyInstanceUID")
        source = checked_uid(ds.ReferencedSeriesSequence[0].SeriesInstanceUID, "referenced series UID")
        study = str(ds.get("StudyInstanceUID", ""))
    except Exception as exc:  # a file we wrote but cannot read back: say so, keep it
        warnings.append(f"derived/{directory.name}: cannot read its source series from {files[0].name} "
                        f"({type(exc).__name__}); left in place, not in the ledger")
        return None
    written_ns = (directory / MANIFEST).stat().st_mtime_ns
    return DerivedCopy(directory.name, source, study, len(files), written_ns,
                       tuple(sorted(deliveries(directory).values(), key=lambda d: d.destination)))


def _latest_derived(spool: Spool, warnings: list[str]) -> dict[str, DerivedCopy]:
    """source series UID → its newest derived series (an older synthesizer's output stays on disk)."""
    out: dict[str, DerivedCopy] = {}
    for name in _series_dirs(spool.derived):
        copy = _read_derived(spool.derived / name, warnings)
        if copy is None:
            continue
        older = out.get(copy.source_series_uid)
        if older is not None:
            keep, drop = (copy, older) if copy.written_ns >= older.written_ns else (older, copy)
            warnings.append(f"derived/{drop.series_uid}: an older derived series of {drop.source_series_uid}; "
                            f"the ledger records the newer derived/{keep.series_uid}")
            copy = keep
        out[copy.source_series_uid] = copy
    return out


def _instances(spool: Spool, series_uid: str) -> tuple[HeldInstance, ...]:
    held = []
    for path in spool.instance_files(series_uid):
        st = path.stat()
        held.append(HeldInstance(path.stem, st.st_size, _digest(path), st.st_mtime_ns))
    return tuple(held)


def _study_uid(spool: Spool, series_uid: str, derived: DerivedCopy | None) -> str:
    for path in spool.instance_files(series_uid)[:1]:
        try:
            return str(_header(path, "StudyInstanceUID").get("StudyInstanceUID", ""))
        except Exception:  # an unreadable instance: the series is kept; its study shows empty
            logger.warning("cannot read the study UID of series %s from %s", series_uid, path.name)
    return derived.study_uid if derived is not None else ""


def _rejection(spool: Spool, series_uid: str) -> tuple[str, str, int] | None:
    """(reason, detail, mtime_ns) from rejected/<uid>/reason, or None."""
    path = spool.rejected / series_uid / "reason"
    if not path.is_file():
        return None
    reason, _, detail = path.read_text(encoding="utf-8", errors="replace").partition("\n")
    return reason.strip() or "unknown", detail.strip(), path.stat().st_mtime_ns


def _plan(spool: Spool, series_uid: str, derived: DerivedCopy | None, warnings: list[str]) -> SeriesPlan | None:
    instances = _instances(spool, series_uid)
    rejection = _rejection(spool, series_uid)
    if not instances and derived is None:
        warnings.append(f"{series_uid}: a folder without instance files; left in place, not in the ledger")
        return None
    study = _study_uid(spool, series_uid, derived)
    outcomes = []
    if rejection is not None:
        outcomes.append((rejection[2], "rejected"))
    if derived is not None:
        outcomes.append((derived.written_ns, "derived"))
    if not outcomes:
        return SeriesPlan(series_uid, study, SeriesState.RECEIVING, "", "", instances, None, None)
    outcome_ns, outcome = max(outcomes)
    outcome_at = outcome_ns / 1e9
    if max((i.mtime_ns for i in instances), default=0) > outcome_ns:   # arrived after it: process again
        return SeriesPlan(series_uid, study, SeriesState.RECEIVING, "", "", instances, derived, None)
    if outcome == "rejected":
        assert rejection is not None
        return SeriesPlan(series_uid, study, SeriesState.REJECTED, rejection[0], rejection[1], instances,
                          derived, outcome_at)
    return SeriesPlan(series_uid, study, SeriesState.SENDING, "", "", instances, derived, outcome_at)


def scan_spool(spool: Spool) -> SpoolScan:
    """Every series the spool holds, as the ledger should know it. Reads (and hashes) every file."""
    warnings: list[str] = []
    derived = _latest_derived(spool, warnings)
    names = set(_series_dirs(spool.incoming)) | set(_series_dirs(spool.rejected)) | set(derived)
    plans = []
    for name in sorted(names):
        try:
            checked_uid(name, "series folder")
        except ValueError as exc:
            warnings.append(f"{exc}; left in place, not in the ledger")
            continue
        plan = _plan(spool, name, derived.get(name), warnings)
        if plan is not None:
            plans.append(plan)
    return SpoolScan(tuple(plans), tuple(warnings))
