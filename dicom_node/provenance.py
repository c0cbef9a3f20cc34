"""What the node writes into its output to say what made it, and how it recognises that output.

Loop prevention must not depend on SeriesDescription alone (PACS rules and users edit it): we look for
our ContributingEquipmentSequence item (manufacturer + model name) and our DerivationDescription.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

MANUFACTURER = "dicom-synth-node"
MODEL_NAME = "Thin-slice CT synthesis node"
DERIVATION_PREFIX = "dicom-synth-node:"


def is_own_output(ds: Dataset) -> bool:
    """True if `ds` carries the markers `write.py` puts into every derived instance."""
    for item in ds.get("ContributingEquipmentSequence", []):
        if item.get("Manufacturer") == MANUFACTURER and item.get("ManufacturerModelName") == MODEL_NAME:
            return True
    return str(ds.get("DerivationDescription", "")).startswith(DERIVATION_PREFIX)
