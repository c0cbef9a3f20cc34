"""What the dashboard reads beside the ledger: disk usage (walked at most every few seconds), the
readiness checks on a thread of their own, and the DICOM header facts of one series (patient data
only when the caller may see it)."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import Engine

import dicom_node
from dicom_node.operations import Check, Operations


@dataclass(frozen=True, slots=True)
class DiskInfo:
    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    used_ratio: float
    watermark: float
    incoming_bytes: int
    rejected_bytes: int
    derived_bytes: int

    @property
    def above_watermark(self) -> bool:
        return self.used_ratio > self.watermark


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    """Facts about a series that identify no one."""

    modality: str
    series_description: str
    body_part: str
    slice_thickness_mm: str
    pixel_spacing_mm: str
    matrix: str
    manufacturer: str
    model_name: str
    convolution_kernel: str
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class PatientInfo:
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    accession_number: str
    study_date: str
    study_description: str


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:        # removed while we walked
                continue
    return total


class DiskProbe:
    """Disk usage of the storage folder; folder sizes are walked at most every `every_s` seconds."""

    def __init__(self, ops: Operations, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ops, self._every_s, self._clock = ops, every_s, clock
        self._sizes: tuple[int, int, int] = (0, 0, 0)
        self._at = -1e18
        self._lock = threading.Lock()

    def __call__(self) -> DiskInfo:
        dirs = self._ops.storage()
        with self._lock:
            if self._clock() - self._at >= self._every_s:
                self._sizes = (_tree_bytes(dirs.incoming), _tree_bytes(dirs.rejected), _tree_bytes(dirs.derived))
                self._at = self._clock()
            sizes = self._sizes
        usage = shutil.disk_usage(dirs.root)
        return DiskInfo(str(dirs.root), usage.total, usage.used, usage.free, usage.used / usage.total,
                        dirs.watermark, *sizes)


def header_info(path: Path) -> HeaderInfo:
    ds = pydicom.dcmread(path, stop_before_pixels=True)

    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        if isinstance(value, pydicom.multival.MultiValue):
            return " × ".join(str(v) for v in value)
        return str(value)

    rows, cols = ds.get("Rows"), ds.get("Columns")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return HeaderInfo(text("Modality"), text("SeriesDescription"), text("BodyPartExamined"),
                      text("SliceThickness"), text("PixelSpacing"),
                      f"{rows} × {cols}" if rows and cols else "", text("Manufacturer"),
                      text("ManufacturerModelName"), text("ConvolutionKernel"),
                      syntax.name if syntax is not None else "")


def patient_info(path: Path) -> PatientInfo:
    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=["PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                                        "AccessionNumber", "StudyDate", "StudyDescription"])
    return PatientInfo(str(ds.get("PatientName", "")), str(ds.get("PatientID", "")),
                       str(ds.get("PatientBirthDate", "")), str(ds.get("PatientSex", "")),
                       str(ds.get("AccessionNumber", "")), str(ds.get("StudyDate", "")),
                       str(ds.get("StudyDescription", "")))


def software_version() -> str:
    return str(getattr(dicom_node, "__version__", "unknown"))


READY_TIMEOUT_S = 5.0


class ReadinessProbe:
    """`readiness` for /readyz, off the shared thread pool: one run at a time, shared by concurrent calls."""

    def __init__(self, ops: Operations, engine: Engine, timeout_s: float = READY_TIMEOUT_S) -> None:
        self._ops, self._engine, self.timeout_s = ops, engine, timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-ready")
        self._running: Future[list[Check]] | None = None
        self._lock = threading.Lock()

    async def checks(self) -> list[Check]:
        """The readiness checks, run on the probe's own thread and waited for at most `timeout_s`."""
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._executor.submit(self._ops.readiness, self._engine)
            running = self._running
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), self.timeout_s)
        except TimeoutError:
            return [Check("checks", False, f"the readiness checks did not finish within {self.timeout_s:g} s "
                                           "(database or disk not answering)")]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
