"""Which received series the node will process: a reason code for each refusal, or None."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from dicom_node.provenance import is_own_output

# Reason codes (also the first line of a rejected series' `reason` file).
OWN_OUTPUT = "own_output"
NOT_CT = "not_ct"
UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"
LOCALIZER = "localizer"


def instance_refusal(ds: Dataset) -> tuple[str, str] | None:
    """Checks on one instance's header that do not need the rest of the series."""
    if is_own_output(ds):
        return OWN_OUTPUT, "this series was produced by this node (or another dicom-synth-node)"
    if ds.get("Modality") != "CT":
        return NOT_CT, f"modality is {ds.get('Modality', '(missing)')!s}, not CT"
    if ds.get("SOPClassUID") != CTImageStorage:
        return UNSUPPORTED_SOP_CLASS, f"SOP class {ds.get('SOPClassUID', '(missing)')!s} is not CT Image Storage"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return LOCALIZER, "ImageType says LOCALIZER (a scout, not an axial series)"
    return None
