"""What the node writes into its output to say what made it, and how it recognises that output.

Every derived instance also carries its self-check line ("self-check: consistency 41.2 dB, lung bias
-0.9 HU", from `synth.selfcheck.SelfCheck.summary`) and, when interpolation stood in for the
configured backend, `fallback_note`: both in ImageComments and DerivationDescription.

Loop prevention must not depend on SeriesDescription alone (PACS rules and users edit it): we look for
our ContributingEquipmentSequence item (manufacturer + model name) and our DerivationDescription.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

MANUFACTURER = "dicom-synth-node"
MODEL_NAME = "Thin-slice CT synthesis node"
DERIVATION_PREFIX = "dicom-synth-node:"


INTERPOLATION = "interpolation"


def fallback_note(backend: str, problems: tuple[str, ...], fallback_problems: tuple[str, ...] = ()) -> str:
    """Why an interpolated series went out in place of `backend`'s (or, for interpolation, despite its check)."""
    if backend == INTERPOLATION:
        return (f"interpolation sent although its self-check failed ({'; '.join(problems)}); it is the "
                "fallback itself")
    text = f"interpolation sent in place of the {backend} output, which failed its self-check ({'; '.join(problems)})"
    if fallback_problems:
        text += f"; the interpolation's own check fails too ({'; '.join(fallback_problems)})"
    return text


def is_own_output(ds: Dataset) -> bool:
    """True if `ds` carries the markers `write.py` puts into every derived instance."""
    for item in ds.get("ContributingEquipmentSequence", []):
        if item.get("Manufacturer") == MANUFACTURER and item.get("ManufacturerModelName") == MODEL_NAME:
            return True
    return str(ds.get("DerivationDescription", "")).startswith(DERIVATION_PREFIX)
