"""What the dashboard shows about the node itself: model and device, disk, destinations, readiness,
and the DICOM header facts of one series (patient data only when the caller may see it)."""

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
from typing import TYPE_CHECKING

import pydicom
from sqlalchemy import Engine

import dicom_node
from dicom_node.assocguard import SlotUsage
from dicom_node.ledger.queries import ping
from dicom_node.receive import STATUS_SUCCESS
from dicom_node.senders import SenderContext, build_sender

if TYPE_CHECKING:
    from dicom_node.app import Node


@dataclass(frozen=True, slots=True)
class ModelInfo:
    backend: str
    name: str
    version: str
    weights_sha256: str
    is_model: bool
    device: str
    precision: str
    factor: int


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
class DestinationInfo:
    name: str
    kind: str          # "dicom" or "folder"
    target: str        # AE@host:port or the folder path


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


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


def model_info(node: Node) -> ModelInfo:
    synthesizer = node.synthesizer
    identity = synthesizer.identity
    device = getattr(synthesizer, "device", None)
    autocast = getattr(synthesizer, "autocast_dtype", None)
    if device is None:
        device_text = "cpu (numpy)" if identity.backend == "interpolation" else node.cfg.synth.device
    else:
        device_text = str(device)
    precision = "fp32" if autocast is None else str(autocast).removeprefix("torch.")
    return ModelInfo(identity.backend, identity.name, identity.version, identity.weights_sha256,
                     identity.is_model, device_text, precision, int(synthesizer.factor))


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

    def __init__(self, node: Node, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._node, self._every_s, self._clock = node, every_s, clock
        self._sizes: tuple[int, int, int] = (0, 0, 0)
        self._at = -1e18
        self._lock = threading.Lock()

    def __call__(self) -> DiskInfo:
        spool = self._node.spool
        with self._lock:
            if self._clock() - self._at >= self._every_s:
                self._sizes = (_tree_bytes(spool.incoming), _tree_bytes(spool.rejected), _tree_bytes(spool.derived))
                self._at = self._clock()
            sizes = self._sizes
        usage = shutil.disk_usage(spool.root)
        return DiskInfo(str(spool.root), usage.total, usage.used, usage.free, usage.used / usage.total,
                        self._node.cfg.node.disk_watermark, *sizes)


def destinations(node: Node) -> list[DestinationInfo]:
    context = SenderContext(node.cfg.node.ae_title, node.cfg.send.timeout_s)
    senders = [build_sender(dest, context) for dest in node.cfg.all_destinations()]
    return [DestinationInfo(s.name, s.kind, s.describe()) for s in senders]


def association_check(usage: SlotUsage) -> Check:
    """Association slots in use. Always ok: a full house is load, not a fault (the node serves every
    association it holds, and refuses more with a transient local-limit rejection that the caller
    retries); a 503 would also let a peer that fills the slots take the node out of a balancer."""
    detail = (f"{usage.active} of {usage.max_associations} association slots in use, "
              f"{usage.pending} connection(s) waiting to associate")
    if usage.full:
        detail += ": new associations are refused (local limit exceeded) until a slot frees"
    return Check("associations", True, detail)


def readiness(node: Node, engine: Engine) -> list[Check]:
    """Ledger reachable, disk below the watermark, synthesizer loaded, every stage running and not
    backing off, DICOM listener up and its association slots (when receiving)."""
    checks = []
    try:
        ping(engine)
        checks.append(Check("ledger", True, engine.url.get_backend_name()))
    except Exception as exc:  # any database failure makes the node unready; say which kind
        checks.append(Check("ledger", False, f"ledger unreachable: {type(exc).__name__}"))
    try:
        usage = shutil.disk_usage(node.spool.root)
        ratio = usage.used / usage.total
        status = node.disk_guard()
        ok = status == STATUS_SUCCESS
        checks.append(Check("disk", ok, f"{ratio:.1%} used, watermark {node.cfg.node.disk_watermark:.0%}"
                            + ("" if ok else ": refusing C-STORE with 0xA700")))
    except OSError as exc:
        checks.append(Check("disk", False, f"storage folder unreadable: {exc.strerror}"))
    synthesizer = getattr(node, "synthesizer", None)
    identity = getattr(synthesizer, "identity", None)
    if synthesizer is None or identity is None:
        checks.append(Check("synthesizer", False, "no synthesizer loaded"))
    else:
        checks.append(Check("synthesizer", True, f"{identity.backend} {identity.version}"))
    checks.extend(Check(h.name, h.ok, h.detail) for h in node.health())
    if node.cfg.node.receive:
        try:
            port = node.scp.port if node.scp is not None else None
        except RuntimeError:
            port = None
        checks.append(Check("dicom", port is not None,
                            f"{node.cfg.node.ae_title} on port {port}" if port is not None
                            else "the DICOM listener is not running"))
        if node.scp is not None:
            checks.append(association_check(node.scp.slot_usage()))
    return checks


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

    def __init__(self, node: Node, engine: Engine, timeout_s: float = READY_TIMEOUT_S) -> None:
        self._node, self._engine, self.timeout_s = node, engine, timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-ready")
        self._running: Future[list[Check]] | None = None
        self._lock = threading.Lock()

    async def checks(self) -> list[Check]:
        """The readiness checks, run on the probe's own thread and waited for at most `timeout_s`."""
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._executor.submit(readiness, self._node, self._engine)
            running = self._running
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), self.timeout_s)
        except TimeoutError:
            return [Check("checks", False, f"the readiness checks did not finish within {self.timeout_s:g} s "
                                           "(database or disk not answering)")]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
