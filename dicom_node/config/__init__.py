"""One typed config object from one TOML file; unknown keys and wrong types are errors.

  checks.py        AE titles, ports, finite and bounded numbers
  node.py          [node]: one flat table, typed parts (identity, listen, timing, associations, storage, roles)
  sections.py      [series], [send], [retention], [database], [web]; the self-check keys of [synth]
  destinations.py  [[destinations]], [[folder_destinations]]
  load.py          NodeConfig, parse_config, load_config, to_dict (check-config, secrets redacted)
"""

from __future__ import annotations

from dicom_node.config.destinations import Destination, DestinationSection, FolderDestinationSection
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
from dicom_node.config.sections import (
    CHECK_FAIL_POLICIES,
    DatabaseSection,
    RetentionSection,
    SelfCheckSection,
    SendSection,
    SeriesSection,
    WebSection,
)

__all__ = [
    "CHECK_FAIL_POLICIES", "DEFAULT_CONFIG", "DEFAULT_MAX_PDU", "AssociationPolicy", "DatabaseSection", "Destination",
    "DestinationSection", "FolderDestinationSection", "Identity", "Listener", "NodeConfig", "NodeSection",
    "RetentionSection", "Roles", "SelfCheckSection", "SendSection", "SeriesSection", "Storage", "Timing", "WebSection",
    "load_config", "parse_config", "redact_url", "to_dict",
]
