"""One typed config object from one TOML file; unknown keys and wrong types are errors.

  checks.py        AE titles, ports, finite and bounded numbers
  node.py          [node]: one flat table, typed parts (identity, listen, timing, associations, storage, roles)
  sections.py      [series], [send], [retention], [database], [web]
  destinations.py  [[destinations]], [[folder_destinations]], [[dicomweb_destinations]]; transfer_syntax
  load.py          NodeConfig, parse_config, load_config, to_dict (check-config, secrets redacted)
"""

from __future__ import annotations

from dicom_node.config.destinations import (
    TRANSFER_SYNTAXES,
    Destination,
    DestinationSection,
    DicomwebDestinationSection,
    FolderDestinationSection,
)
from dicom_node.config.load import DEFAULT_CONFIG, NodeConfig, load_config, parse_config, redact_url, to_dict
from dicom_node.config.node import (
    DEFAULT_MAX_PDU,
    AssociationPolicy,
    Identity,
    Listener,
    NodeSection,
    Roles,
    Storage,
    Timing,
)
from dicom_node.config.sections import DatabaseSection, RetentionSection, SendSection, SeriesSection, WebSection

__all__ = [
    "DEFAULT_CONFIG", "DEFAULT_MAX_PDU", "TRANSFER_SYNTAXES", "AssociationPolicy", "DatabaseSection", "Destination",
    "DestinationSection", "DicomwebDestinationSection", "FolderDestinationSection", "Identity", "Listener",
    "NodeConfig", "NodeSection", "RetentionSection", "Roles", "SendSection", "SeriesSection", "Storage", "Timing",
    "WebSection", "load_config", "parse_config", "redact_url", "to_dict",
]
