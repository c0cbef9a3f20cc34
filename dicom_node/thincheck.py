"""skip_if_thin: does the PACS already hold a thin CT series of this study? (C-FIND, SERIES level.)

Asked before synthesis. Only an answer that names a thin CT series makes the node skip; a PACS that
refuses, does not answer within the timeout or answers with failures is no reason to skip: the
answer says why, the node logs it and goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from dicom_node.config import DestinationSection
from dicom_node.netutil import client_tls_args, set_nodelay

logger = logging.getLogger(__name__)

THIN_SERIES_EXISTS = "thin_series_exists"     # the series state and reason
PENDING_STATUSES = (0xFF00, 0xFF01)
MAX_ANSWERS = 10000                           # a study with more series than this: look no further


@dataclass(frozen=True, slots=True)
class ThinAnswer:
    thin_series_uid: str = ""                 # a thin CT series found ("" when none)
    thickness_mm: float | None = None
    error: str = ""                           # why the PACS gave no usable answer ("" when it did)
    series_seen: int = 0


def _query(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = ""
    ds.Modality = ""
    ds.SliceThickness = ""
    return ds


def _thickness(answer: Dataset) -> float | None:
    value = answer.get("SliceThickness")
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def find_thin_series(dest: DestinationSection, *, calling_ae: str, study_uid: str, max_thickness_mm: float,
                     timeout_s: float, is_ours: Callable[[str], bool]) -> ThinAnswer:
    """C-FIND the study's series on `dest`; the first CT series not made by us (`is_ours`) whose
    SliceThickness is at most `max_thickness_mm`, or why there is no answer."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=client_tls_args(dest),
                             evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
    except (OSError, ValueError, RuntimeError) as exc:        # TLS setup and socket errors
        return ThinAnswer(error=f"{type(exc).__name__}: {exc}"[:200])
    if not assoc.is_established:
        what = "rejected the association" if assoc.is_rejected else "did not associate"
        return ThinAnswer(error=f"{dest.ae_title}@{dest.host}:{dest.port} {what}")
    seen, found = 0, ThinAnswer()
    try:
        for status, identifier in assoc.send_c_find(_query(study_uid), StudyRootQueryRetrieveInformationModelFind):
            code = int(status.Status) if status is not None and "Status" in status else None
            if code is None:
                why = "the association was aborted" if assoc.is_aborted else "no answer within the timeout"
                return ThinAnswer(error=f"C-FIND got no valid response ({why})", series_seen=seen)
            if code not in PENDING_STATUSES:
                if code != 0x0000:
                    return ThinAnswer(error=f"C-FIND answered 0x{code:04X}", series_seen=seen)
                break
            seen += 1
            if identifier is None or found.thin_series_uid or seen > MAX_ANSWERS:
                continue                      # read the answers to the end: the association stays orderly
            series_uid = str(identifier.get("SeriesInstanceUID", ""))
            thickness = _thickness(identifier)
            if (identifier.get("Modality") == "CT" and thickness is not None and thickness <= max_thickness_mm
                    and series_uid and not is_ours(series_uid)):
                found = ThinAnswer(series_uid, thickness)
    finally:
        if assoc.is_established:
            assoc.release()
    return ThinAnswer(found.thin_series_uid, found.thickness_mm, series_seen=seen)
